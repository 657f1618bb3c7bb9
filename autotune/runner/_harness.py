"""Inside the trial process: apply a TrainConfig to the workload, warm up, then time windows.

Every figure sent back is measured here; the parent only decides (prune, kill, record).
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from autotune.config import TrainConfig
from autotune.runner._outcome import TrialJob
from autotune.workload import Workload

Emit = Callable[[dict[str, Any]], None]


class Diverged(Exception):
    """The loss became NaN or infinite."""


class Training:
    """A workload with a TrainConfig applied: the model, data, optimizer, numerics, one step at a time."""

    def __init__(self, job: TrialJob, workload: Workload, emit: Emit, *, one_cycle_steps: int | None) -> None:
        config = TrainConfig.from_dict(job.config)
        torch.manual_seed(job.measure.seed)
        device = torch.device(job.device)
        _configure_device(device, config, job.memory_budget_bytes)
        emit({"event": "started", "device": _device_name(device), "torch_version": torch.__version__,
              "unit": workload.unit})
        model = workload.model()
        if config.gradient_checkpointing:
            _enable_gradient_checkpointing(model, workload)
        model = model.to(device)
        if config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        self.config = config
        self.device = device
        self.optimizer = (workload.optimizer or _default_optimizer)(model.parameters(), config.max_lr)
        scheduler = None if one_cycle_steps is None else _one_cycle(self.optimizer, config.max_lr, one_cycle_steps)
        forward_model = model if config.compile == "off" else torch.compile(model, mode=config.compile)
        self.scaler = torch.amp.GradScaler(device.type) if config.precision == "fp16" else None
        autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)
        self.batches = _Batches(workload, config, device)
        self.step = _Stepper(
            forward_model, workload, config, self.optimizer, scheduler, self.scaler, autocast_dtype, device, self.batches
        )

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def scale(self) -> float | None:
        """The GradScaler's current scale (fp16 only); reading it synchronises the device."""
        return None if self.scaler is None else float(self.scaler.get_scale())


def run_harness(job: TrialJob, workload: Workload, emit: Emit) -> None:
    started = time.perf_counter()
    measure = job.measure
    training = Training(job, workload, emit, one_cycle_steps=measure.max_steps)
    config, device, batches, step = training.config, training.device, training.batches, training.step
    guard = _DivergenceGuard(measure.divergence_factor)

    # Warm-up: worker start, torch.compile, cuDNN autotune, allocator growth. Not timed as throughput.
    warmup_steps = max(1, measure.warmup_steps) + (1 if config.compile != "off" else 0)
    step_seconds = []
    loss_start = None
    for index in range(warmup_steps):
        batches.reset_counters()
        begin = time.perf_counter()
        loss = step()
        value = float(loss)  # .item(): synchronises the device, so the step's time is complete
        step_seconds.append(time.perf_counter() - begin)
        guard.check(value, f"warm-up step {index + 1}")
        loss_start = value if loss_start is None else loss_start
        # Lets the parent give up early on a config that cannot reach the slow threshold.
        emit({"event": "warmup_step", "index": index, "samples": batches.samples, "seconds": step_seconds[-1],
              "data_wait_seconds": batches.wait_seconds, "compiled": config.compile != "off"})
    compile_seconds = 0.0
    if config.compile != "off":
        steady = step_seconds[-1]
        compile_seconds = max(0.0, sum(step_seconds[:-1]) - steady * (len(step_seconds) - 1))
    emit(
        {
            "event": "warmup",
            "warmup_seconds": time.perf_counter() - started,
            "compile_seconds": compile_seconds,
            "loss_start": loss_start,
            "dataset_size": batches.dataset_size,
        }
    )

    loss_end = loss_start
    skipped_steps = 0
    for window in range(measure.windows):
        scale_before = training.scale()
        batches.reset_counters()
        _synchronize(device)  # window edge: no earlier work leaks into this window
        begin = time.perf_counter()
        steps = 0
        loss_sum = torch.zeros((), device=device)
        while steps < measure.min_window_steps or (
            steps < measure.max_window_steps and time.perf_counter() - begin < measure.window_seconds
        ):
            loss_sum += step().detach().float()
            steps += 1
        _synchronize(device)  # window edge: every step issued above has finished on the device
        seconds = time.perf_counter() - begin  # wall seconds, data loading included
        loss_end = float(loss_sum) / steps
        guard.check(loss_end, f"timed window {window + 1}")
        skipped_steps += _skipped_by_scaler(scale_before, training.scale())
        emit(
            {
                "event": "window",
                "index": window,
                "steps": steps,
                "samples": batches.samples,
                "units": batches.units,
                "seconds": seconds,
                "data_wait_seconds": batches.wait_seconds,
                "loss": loss_end,
            }
        )
    emit(
        {
            "event": "done",
            "loss_end": loss_end,
            "scaler_skipped_steps": skipped_steps if training.scaler is not None else None,
            "device_peak_memory_bytes": _device_peak_memory(device),
            "process_peak_rss_bytes": _process_peak_rss(),
        }
    )


class _Batches:
    """Endless iteration over the workload's DataLoader, timing the waits for data."""

    def __init__(self, workload: Workload, config: TrainConfig, device: torch.device) -> None:
        dataset = workload.dataset()
        with_workers = config.num_workers > 0
        self.loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=True,  # static shapes: no recompiles, every step has batch_size samples
            num_workers=config.num_workers,
            prefetch_factor=config.prefetch_factor if with_workers else None,
            persistent_workers=config.persistent_workers if with_workers else False,
            pin_memory=config.pin_memory and device.type == "cuda",
            collate_fn=workload.collate_fn,
        )
        if len(self.loader) == 0:
            raise ValueError(f"dataset has {len(dataset)} samples, fewer than batch_size {config.batch_size}")
        self.dataset_size = len(dataset)
        self.count = workload.count
        self.batch_size = config.batch_size
        self.device = device
        self.non_blocking = config.pin_memory and device.type == "cuda"
        self.channels_last = config.channels_last
        self.iterator: Iterator[Any] = iter(self.loader)
        self.reset_counters()

    def reset_counters(self) -> None:
        self.samples = 0
        self.units = 0.0
        self.wait_seconds = 0.0

    def next(self) -> Any:
        begin = time.perf_counter()
        try:
            batch = next(self.iterator)
        except StopIteration:  # epoch boundary: a new pass, as the full run would make
            self.iterator = iter(self.loader)
            batch = next(self.iterator)
        self.wait_seconds += time.perf_counter() - begin
        self.samples += self.batch_size
        self.units += float(self.count(batch)) if self.count else self.batch_size  # on the host: no sync
        return self._to_device(batch)

    def _to_device(self, value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            value = value.to(self.device, non_blocking=self.non_blocking)
            if self.channels_last and value.dim() == 4 and value.is_floating_point():
                value = value.contiguous(memory_format=torch.channels_last)
            return value
        if isinstance(value, dict):
            return {key: self._to_device(item) for key, item in value.items()}
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
            return type(value)(*(self._to_device(item) for item in value))
        if isinstance(value, (list, tuple)):
            return type(value)(self._to_device(item) for item in value)
        return value


class _Stepper:
    """One optimizer step: ``accumulation_steps`` micro-batches, then step and schedule."""

    def __init__(self, model, workload, config, optimizer, scheduler, scaler, autocast_dtype, device, batches):
        self.model = model
        self.loss_fn = workload.loss
        self.accumulation_steps = config.accumulation_steps
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scaler = scaler
        self.autocast_dtype = autocast_dtype
        self.device_type = device.type
        self.batches = batches

    def __call__(self) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        total = None
        for _ in range(self.accumulation_steps):
            batch = self.batches.next()
            with self._autocast():
                loss = self.loss_fn(self.model, batch)
            scaled = loss / self.accumulation_steps
            if self.scaler is not None:
                self.scaler.scale(scaled).backward()
            else:
                scaled.backward()
            total = scaled.detach() if total is None else total + scaled.detach()
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None and self.scheduler.last_epoch + 1 < self.scheduler.total_steps:
            self.scheduler.step()
        return total

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.autocast_dtype)


def _configure_device(device: torch.device, config: TrainConfig, memory_budget_bytes: int | None) -> None:
    if device.type != "cuda":
        return
    torch.cuda.set_device(device)
    # fp32 means true fp32: TF32 off for matmuls and for cuDNN convolutions (PyTorch's default is on).
    torch.backends.cuda.matmul.allow_tf32 = config.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = config.precision == "tf32"
    torch.backends.cudnn.benchmark = True  # autotuned during warm-up, as a real run would
    if memory_budget_bytes is not None:
        total = torch.cuda.get_device_properties(device).total_memory
        # Enforce the budget for real: allocations past it raise OutOfMemoryError.
        torch.cuda.set_per_process_memory_fraction(min(1.0, memory_budget_bytes / total), device)
    torch.cuda.reset_peak_memory_stats(device)


def _enable_gradient_checkpointing(model: Any, workload: Workload) -> None:
    if workload.gradient_checkpointing is not None:
        workload.gradient_checkpointing(model)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()  # Hugging Face convention
    else:
        raise ValueError("gradient_checkpointing needs Workload.gradient_checkpointing or a model "
                         "with gradient_checkpointing_enable()")


def _default_optimizer(params: Any, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=lr)


def _one_cycle(optimizer: torch.optim.Optimizer, max_lr: float, total_steps: int):
    defaults = optimizer.defaults
    cycle_momentum = "betas" in defaults or defaults.get("momentum", 0) > 0
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps, cycle_momentum=cycle_momentum
    )


class _DivergenceGuard:
    """NaN or infinite loss; or, with a factor, a (positive) loss risen above factor x its first value."""

    def __init__(self, factor: float | None) -> None:
        self.factor = factor
        self.first: float | None = None

    def check(self, value: float, where: str) -> None:
        if not math.isfinite(value):
            raise Diverged(f"loss became {value} in {where}")
        if self.first is None:
            self.first = value
        elif self.factor is not None and self.first > 0 and value > self.factor * self.first:
            raise Diverged(
                f"loss rose to {value:.4g} in {where}, above {self.factor:g}x its starting value {self.first:.4g}"
            )


def _skipped_by_scaler(before: float | None, after: float | None) -> int:
    """Optimizer steps the GradScaler skipped (inf/NaN gradients): each one halves its scale."""
    if before is None or after is None or after >= before:
        return 0
    return round(math.log2(before / after))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


def _device_peak_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_reserved(device))  # allocator's peak, what must fit the card
    return None


def _process_peak_rss() -> int:
    """This process's own peak resident memory. On Linux, VmHWM: ru_maxrss survives exec(), so
    it would report the parent's peak when the parent was bigger."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, others KiB
