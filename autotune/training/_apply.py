"""Where every knob of a TrainConfig acts: the one module that trials, ``autotune train`` and your
own training loop all use, so what a trial measured is what the full run does.

A loop of your own, with an exported config::

    from autotune import TrainConfig, training

    config = TrainConfig.load("best.yaml")
    device = torch.device("cuda")
    with training.backend_flags(config, device):                 # TF32, cudnn.benchmark; restored after
        model = training.prepare_model(MyNet(), config, device)  # checkpointing, device, channels_last
        optimizer = training.optimizer_implementation(               # the config's implementation (fused...)
            torch.optim.AdamW(training.trainable_parameters(model), lr=config.max_lr), config)
        loader = training.dataloader(MyDataset(), config, device)
        steps = len(loader) // config.accumulation_steps * epochs
        scheduler = training.one_cycle(optimizer, config, steps)
        step = training.TrainStep(training.compile_model(model, config), my_loss, optimizer, config, device,
                                  scheduler=scheduler)                # autocast, GradScaler, accumulation
        for epoch in range(epochs):
            for micro_batches in training.optimizer_steps(loader, config):
                loss = step(micro_batches)
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import torch

from autotune.exceptions import WorkloadError
from autotune.knobs._config import TrainConfig
from autotune.knobs._table import KNOBS, optimizer_kwargs

if TYPE_CHECKING:
    from autotune.workload._workload import Workload

Loss = Callable[[Any, Any], torch.Tensor]

# The OneCycle defaults of torch.optim.lr_scheduler.OneCycleLR, written out so the export can state them.
ONE_CYCLE_DEFAULTS: dict[str, Any] = {
    "pct_start": 0.3,
    "div_factor": 25.0,
    "final_div_factor": 1e4,
    "anneal_strategy": "cos",
}


@contextlib.contextmanager
def backend_flags(config: TrainConfig, device: torch.device | str) -> Iterator[None]:
    """CUDA backend flags for the config, restored on exit: TF32 matmuls and cuDNN convolutions on
    for ``tf32`` and off otherwise (fp32 means true fp32; PyTorch's own cuDNN default is on), and
    cudnn.benchmark on (convolution algorithms autotuned in the first steps). No-op off CUDA."""
    if torch.device(device).type != "cuda":
        yield
        return
    saved = (tf32_enabled(), torch.backends.cudnn.benchmark)
    set_tf32(config.precision == "tf32")
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        set_tf32(saved[0])
        torch.backends.cudnn.benchmark = saved[1]


def _new_tf32_api() -> bool:
    # torch >= 2.9: fp32_precision per backend. Once it is in use (transformers' TrainingArguments
    # sets it), reading the legacy allow_tf32 flags raises, so it is preferred where it exists.
    return hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(torch.backends.cudnn, "conv")


def tf32_enabled() -> tuple[bool, bool]:
    """Whether fp32 matmuls and cuDNN convolutions may use TF32: (matmul, convolution)."""
    if _new_tf32_api():
        cudnn_conv: Any = torch.backends.cudnn.conv  # type: ignore[attr-defined]  # torch's stubs predate it
        return (torch.backends.cuda.matmul.fp32_precision == "tf32", cudnn_conv.fp32_precision == "tf32")
    return torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def set_tf32(enabled: bool | tuple[bool, bool]) -> None:
    """TF32 for fp32 matmuls and cuDNN convolutions: one flag for both, or (matmul, convolution)."""
    matmul, convolution = enabled if isinstance(enabled, tuple) else (enabled, enabled)
    if _new_tf32_api():
        torch.backends.cuda.matmul.fp32_precision = "tf32" if matmul else "ieee"
        cudnn_conv: Any = torch.backends.cudnn.conv  # type: ignore[attr-defined]  # torch's stubs predate it
        cudnn_conv.fp32_precision = "tf32" if convolution else "ieee"
    else:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = convolution


def dataloader(
    dataset: Any,
    config: TrainConfig,
    device: torch.device | str = "cpu",
    *,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    shuffle: bool = True,
    drop_last: bool = True,
    generator: torch.Generator | None = None,
    shard: bool | None = None,
) -> torch.utils.data.DataLoader:
    """The DataLoader the config measured: micro-batch size, workers, prefetch, persistence and
    pinned memory (CUDA only). ``drop_last`` keeps every step at ``batch_size`` samples, so shapes
    stay static and a compiled model does not recompile on a short last batch.

    In a process group of several ranks (DistributedDataParallel), each rank reads its own disjoint
    shard of the dataset through a DistributedSampler (``shard=None``: where a group is running;
    False: every rank reads it all); ``batch_size`` is then each rank's. Batches reshuffles the shards
    each pass (set_epoch)."""
    with_workers = config.num_workers > 0
    sampler: torch.utils.data.distributed.DistributedSampler | None = None
    if shard or (shard is None and world_size() > 1):
        sampler = torch.utils.data.distributed.DistributedSampler(dataset, shuffle=shuffle, drop_last=drop_last)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=shuffle if sampler is None else False,  # the sampler shuffles the shards
        sampler=sampler,
        drop_last=drop_last,
        num_workers=config.num_workers,
        prefetch_factor=config.prefetch_factor if with_workers else None,
        persistent_workers=config.persistent_workers if with_workers else False,
        pin_memory=pins_memory(config, device),
        collate_fn=collate_fn,
        generator=generator,
    )


def dataloader_kwargs(config: TrainConfig, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The DataLoader keyword arguments the config sets (for loaders built elsewhere)."""
    with_workers = config.num_workers > 0
    kwargs: dict[str, Any] = {
        "batch_size": config.batch_size,
        "num_workers": config.num_workers,
        "pin_memory": pins_memory(config, device),
        "drop_last": True,
    }
    if with_workers:
        kwargs["prefetch_factor"] = config.prefetch_factor or 2  # DataLoader's own default
        kwargs["persistent_workers"] = config.persistent_workers
    return kwargs


def world_size() -> int:
    """The processes of the running torch.distributed process group (1 where none runs): the data-parallel
    ranks that each take ``batch_size`` samples a micro-step."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def distributed_model(model: torch.nn.Module, device: torch.device | str) -> Any:
    """The model in DistributedDataParallel where a process group of several ranks runs (its gradients
    averaged over the ranks in every backward, rank 0's weights broadcast at the start; ``device_ids``
    the rank's GPU on CUDA); the model itself otherwise. Wrap after prepare_model, compile after this."""
    if world_size() <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(device)
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        return DistributedDataParallel(model, device_ids=[index], output_device=index)
    return DistributedDataParallel(model)


def pins_memory(config: TrainConfig, device: torch.device | str) -> bool:
    """Pinned host memory only helps (and only works) for copies to a CUDA device."""
    return config.pin_memory and torch.device(device).type == "cuda"


def prepare_model(
    model: torch.nn.Module,
    config: TrainConfig,
    device: torch.device | str,
    *,
    gradient_checkpointing: Callable[[Any], None] | None = None,
) -> torch.nn.Module:
    """Gradient checkpointing (``gradient_checkpointing(model)``, else the model's Hugging Face style
    ``gradient_checkpointing_enable()``), the move to the device, channels_last, training mode.
    Returns the model itself (not compiled: save its state_dict, compile it with compile_model)."""
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model, gradient_checkpointing)
    model = model.to(device)
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # Module.to takes it
    model.train()
    return model


def enable_gradient_checkpointing(model: Any, hook: Callable[[Any], None] | None = None) -> None:
    """Gradient checkpointing on ``model``: the workload's hook when it has one, else the model's own
    ``gradient_checkpointing_enable()`` (Hugging Face models); a WorkloadError when there is neither."""
    if hook is not None:
        hook(model)
    elif callable(getattr(model, "gradient_checkpointing_enable", None)):
        model.gradient_checkpointing_enable()  # Hugging Face convention (PEFT models pass it on)
        frozen = any(not parameter.requires_grad for parameter in model.parameters())
        if frozen and callable(getattr(model, "enable_input_require_grads", None)):
            # Frozen embeddings (LoRA, adapters): without a grad-requiring input, checkpointed
            # blocks would have nothing to backpropagate into.
            model.enable_input_require_grads()
    else:
        raise WorkloadError(
            "gradient_checkpointing needs Workload.gradient_checkpointing or a model with "
            "gradient_checkpointing_enable()"
        )


def compile_model(model: torch.nn.Module, config: TrainConfig) -> Any:
    """``torch.compile(model, mode=config.compile)``, or the model itself for ``off``. The compiled
    module shares the model's parameters: save the model's state_dict, not this one's.

    Shapes that vary per batch (padding to the longest sequence) compile twice, not once per
    shape: with torch.compile's ``dynamic=None``, the first recompile marks the changed dimensions
    dynamic (7 sequence lengths gave 2 graphs on torch 2.13). The batch dimension stays static:
    ``dataloader`` drops the last short batch."""
    if config.compile == "off":
        return model
    return torch.compile(model, mode=config.compile)


def autocast_dtype(config: TrainConfig) -> torch.dtype | None:
    """The autocast dtype of the config's precision; None for fp32 and tf32 (no autocast)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.precision)


def autocast(config: TrainConfig, device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """Mixed-precision autocast for bf16 and fp16; nothing for fp32 and tf32."""
    dtype = autocast_dtype(config)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def grad_scaler(config: TrainConfig, device: torch.device | str) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling (its range underflows small gradients); bf16 and fp32 do not."""
    if config.precision != "fp16":
        return None
    return torch.amp.GradScaler(torch.device(device).type)


def unsupported_by_workload(workload: Workload, device: torch.device | str = "cpu") -> dict[str, dict[Any, str]]:
    """Knob values this workload cannot use on ``device``, each with its reason: the search drops them first.
    The model is built on "meta" (no memory, no weights); one that cannot be built there keeps every knob,
    and its trials say what fails."""
    try:
        with torch.device("meta"):
            model = workload.model()
    except Exception:  # noqa: BLE001 - checked in its trials instead
        return {}
    modules = list(model.modules()) if callable(getattr(model, "modules", None)) else None
    dropped: dict[str, dict[Any, str]] = {}
    if workload.gradient_checkpointing is None and not callable(getattr(model, "gradient_checkpointing_enable", None)):
        dropped["gradient_checkpointing"] = {
            True: "the workload has no gradient_checkpointing hook and its model no gradient_checkpointing_enable()"
        }
    if modules is not None and not any(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in modules):
        dropped["channels_last"] = {True: "the model has no 2-D convolutions for channels_last to speed up"}
    for name, values in _optimizer_unsupported(workload, model, device).items():
        dropped.setdefault(name, {}).update(values)
    return dropped


# A precision whose matmuls run below this share of fp32's on the device is not searched: no step gains.
SLOW_PRECISION = 0.5
_PROBE_SIZE = 256  # a square matmul: large enough for the vector units, small enough for any device
_PROBE_SECONDS = 0.15  # per precision, over _PROBE_ROUNDS rounds: the probe takes well under a second
_PROBE_ROUNDS = 3


def slow_precisions(device: torch.device | str, precisions: Iterable[str]) -> dict[str, str]:
    """The ``precisions`` (of bf16, fp16) whose matmuls under the knob's own autocast run below
    SLOW_PRECISION of fp32's on ``device``, each with its reason: a short probe of the device before the
    search (a CPU without bf16 instructions runs bf16 a hundred times slower than fp32; one with them,
    faster). A precision the device cannot run at all is left to the trial that tries it."""
    wanted = [p for p in precisions if p in ("bf16", "fp16")]
    if not wanted:
        return {}
    rates = {name: _matmul_rate(str(torch.device(device)), name) for name in ("fp32", *wanted)}
    fp32 = rates["fp32"]
    return {
        name: (
            f"{name} matmuls run at {rate / 1e9:.2g} GFLOP/s on this {torch.device(device).type}, "
            f"{rate / fp32:.2g}x fp32's {fp32 / 1e9:.3g} (a short probe before the search): no step gains from it here"
        )
        for name, rate in rates.items()
        if name != "fp32" and rate is not None and fp32 and rate < SLOW_PRECISION * fp32
    }


@functools.cache
def _matmul_rate(device: str, precision: str) -> float | None:
    """FLOP/s of a square matmul under ``precision``'s autocast on ``device``, on one CPU thread (the
    fastest of a few short rounds, so a busy machine reads less low; once per process); None where it
    cannot run there."""
    config = TrainConfig.from_dict({"precision": precision})
    rates = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core's instructions: what a precision's support decides, whatever the load
    try:
        with torch.no_grad(), autocast(config, device):
            a = torch.randn(_PROBE_SIZE, _PROBE_SIZE, device=device)
            (a @ a).sum().item()  # the first call pays for kernel selection, not measured
            for _ in range(_PROBE_ROUNDS):
                count, began = 0, time.perf_counter()
                while count < 1 or time.perf_counter() - began < _PROBE_SECONDS / _PROBE_ROUNDS:
                    b = a @ a
                    count += 1
                b.sum().item()  # waits for the device
                rates.append(count * 2 * _PROBE_SIZE**3 / (time.perf_counter() - began))
    except Exception:  # noqa: BLE001 - a precision the device cannot run: its trial says why
        return None
    finally:
        torch.set_num_threads(threads)
    return max(rates)


def _optimizer_unsupported(workload: Workload, model: Any, device: torch.device | str) -> dict[str, dict[Any, str]]:
    """Values of the knobs that pass arguments to the optimizer (the knob table's optimizer_kwargs) that the
    workload's optimizer does not take, or that fail on ``device`` (built over one small parameter there)."""
    try:
        optimizer = (workload.optimizer or default_optimizer)(trainable_parameters(model), 1e-3)
    except Exception:  # noqa: BLE001 - an optimizer that cannot be built on "meta" is checked in its trials
        return {}
    dropped: dict[str, dict[Any, str]] = {}
    for name, entry in KNOBS.items():
        for value in entry.choices or () if entry.optimizer_kwargs is not None else ():
            kwargs = optimizer_kwargs({name: value})
            if not kwargs:
                continue
            try:
                # One build over a small parameter on the device checks both the argument and the device.
                rebuilt_optimizer(optimizer, kwargs, [torch.nn.Parameter(torch.zeros(2, device=device))])
            except WorkloadError as exc:
                dropped.setdefault(name, {})[value] = f"the workload's optimizer: {exc}"
            except Exception as exc:  # noqa: BLE001 - its message is the reason
                reason = " ".join(str(exc).split())[:160]
                dropped.setdefault(name, {})[value] = f"{type(optimizer).__name__}{kwargs} fails on {device}: {reason}"
    return dropped


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters that require grad: frozen weights (LoRA bases, adapters' hosts) stay out."""
    return [parameter for parameter in model.parameters() if parameter.requires_grad]


def default_optimizer(params: Any, lr: float, **kwargs: Any) -> torch.optim.Optimizer:
    """AdamW, the optimizer a Workload without one trains with (``optimizer.fused`` and other
    workload knobs arrive as keyword arguments)."""
    return torch.optim.AdamW(params, lr=lr, **kwargs)


def optimizer_implementation(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer with the implementation the config's knobs ask for (the knob table's optimizer
    keyword arguments, such as ``fused=True``), rebuilt with its parameter groups and settings; the same
    optimizer when they ask for nothing. Call it before building a scheduler or taking a step."""
    kwargs = optimizer_kwargs(config.to_dict())
    return rebuilt_optimizer(optimizer, kwargs) if kwargs else optimizer


# Keyword arguments that exclude each other in torch.optim, with the value that turns the other one off.
_EXCLUSIVE = {"foreach": ("fused", False), "fused": ("foreach", None)}


def rebuilt_optimizer(
    optimizer: torch.optim.Optimizer, kwargs: dict[str, Any], params: list[torch.Tensor] | None = None
) -> torch.optim.Optimizer:
    """A new optimizer of the same class over the same parameter groups (or over ``params``, with the
    optimizer's settings), with ``kwargs`` set. A WorkloadError names an argument the class does not take."""
    cls = type(optimizer)
    accepted = inspect.signature(cls.__init__).parameters
    missing = [key for key in kwargs if key not in accepted]
    if missing:
        raise WorkloadError(f"{cls.__name__} takes no {missing[0]}= argument")
    settings = dict(kwargs)
    for key in kwargs:
        other, off = _EXCLUSIVE.get(key, (None, None))
        if other is not None and other in accepted and other not in kwargs:
            settings[other] = off
    groups = [{**group, **settings} for group in optimizer.param_groups] if params is None else [{"params": params}]
    defaults = {key: value for key, value in {**optimizer.defaults, **settings}.items() if key in accepted}
    return cls(groups, **defaults)


def cycles_momentum(optimizer: torch.optim.Optimizer) -> bool:
    """Whether OneCycle should cycle momentum: only for optimizers that have it (Adam's betas, SGD
    with momentum > 0). Cycling it on plain SGD would switch momentum on, changing the recipe."""
    defaults = optimizer.defaults
    return "betas" in defaults or (defaults.get("momentum") or 0) > 0


def one_cycle(
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    total_steps: int,
    *,
    max_lr: float | None = None,
    pct_start: float = ONE_CYCLE_DEFAULTS["pct_start"],
    div_factor: float = ONE_CYCLE_DEFAULTS["div_factor"],
    final_div_factor: float = ONE_CYCLE_DEFAULTS["final_div_factor"],
    anneal_strategy: str = ONE_CYCLE_DEFAULTS["anneal_strategy"],
    cycle_momentum: bool | None = None,
) -> torch.optim.lr_scheduler.OneCycleLR:
    """OneCycleLR peaking at ``config.max_lr`` over ``total_steps`` optimizer steps. Takes an
    export's ``one_cycle:`` mapping as keyword arguments: ``one_cycle(opt, config, **doc["one_cycle"])``.
    ``cycle_momentum=None`` decides from the optimizer (see cycles_momentum)."""
    if cycle_momentum is None:
        cycle_momentum = cycles_momentum(optimizer)
    if anneal_strategy not in ("cos", "linear"):
        raise ValueError(f"anneal_strategy must be cos or linear, got {anneal_strategy!r}")
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.max_lr if max_lr is None else max_lr,
        total_steps=max(1, int(total_steps)),
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        anneal_strategy="linear" if anneal_strategy == "linear" else "cos",
        cycle_momentum=cycle_momentum,
    )


def steps_per_epoch(dataset_size: int, config: TrainConfig) -> int:
    """Optimizer steps in one pass: full micro-batches (drop_last), grouped by accumulation_steps; with
    data-parallel ranks (world_size), each reads its shard of the dataset (1/world_size of it) in that many."""
    return (dataset_size // config.world_size // config.batch_size) // config.accumulation_steps


def to_device(batch: Any, device: torch.device | str, config: TrainConfig) -> Any:
    """Tensors inside tuples, lists, dicts and namedtuples moved to the device (non-blocking from
    pinned memory); 4-D floating-point tensors in channels_last when the config says so."""
    non_blocking = pins_memory(config, device)

    def move(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=non_blocking)
            if config.channels_last and value.dim() == 4 and value.is_floating_point():
                value = value.contiguous(memory_format=torch.channels_last)
            return value
        if isinstance(value, dict):
            return {key: move(item) for key, item in value.items()}
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # namedtuple
            return type(value)(*(move(item) for item in value))
        if isinstance(value, (list, tuple)):
            return type(value)(move(item) for item in value)
        return value

    return move(batch)


def optimizer_steps(loader: Iterable[Any], config: TrainConfig) -> Iterator[list[Any]]:
    """One pass over ``loader`` in groups of ``accumulation_steps`` micro-batches, one group per
    optimizer step; a last incomplete group is dropped (as steps_per_epoch counts)."""
    group: list[Any] = []
    for batch in loader:
        group.append(batch)
        if len(group) == config.accumulation_steps:
            yield group
            group = []


class TrainStep:
    """One optimizer step: ``accumulation_steps`` micro-batches (moved to the device, forward and
    loss under autocast, backward scaled by the GradScaler for fp16), then the optimizer step, the
    scheduler's, and ``after_step(model, optimizer)`` (EMA or SWA averaging, a scheduler of your
    own): their cost is part of the step. Returns the step's mean loss, detached (no device sync).

    ``closure=True`` is for optimizers whose step re-evaluates the loss (SAM, LBFGS): after the
    first forward and backward, ``optimizer.step(closure)`` is called with a closure that zeroes
    the gradients and runs forward and backward again over the same micro-batches (with
    accumulation, all of them are kept on the device until the step ends) and returns their loss.
    fp16 is refused with it: torch.amp.GradScaler.step takes no closure.
    """

    def __init__(
        self,
        model: Any,
        loss: Loss,
        optimizer: torch.optim.Optimizer,
        config: TrainConfig,
        device: torch.device | str,
        *,
        scheduler: Any = None,
        scaler: torch.amp.GradScaler | None | bool = True,
        closure: bool = False,
        after_step: Callable[[Any, Any], None] | None = None,
    ) -> None:
        self.model = model
        self.loss = loss
        self.optimizer = optimizer
        self.config = config
        self.device = torch.device(device)
        self.scheduler = scheduler
        # True: the GradScaler the precision needs (fp16), made here; or pass your own (or None).
        self.scaler = grad_scaler(config, self.device) if scaler is True else scaler or None
        if closure and self.scaler is not None:
            from autotune.workload._workload import CLOSURE_FP16

            raise WorkloadError(CLOSURE_FP16)
        self.closure = closure
        self.after_step = after_step

    def __call__(self, micro_batches: Iterable[Any]) -> torch.Tensor:
        total, kept = self.accumulate(micro_batches)
        if self.closure:
            self.optimizer.step(lambda: float(self._replay(kept)))
        elif self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None and not _schedule_finished(self.scheduler):
            self.scheduler.step()
        if self.after_step is not None:
            self.after_step(self.model, self.optimizer)
        return total

    def accumulate(
        self,
        micro_batches: Iterable[Any],
        count: int | None = None,
        *,
        after_backward: Callable[[], None] | None = None,
    ) -> tuple[torch.Tensor, list[Any]]:
        """The step's gradients without the step: zeroed, then forward and backward over ``count``
        micro-batches (default ``accumulation_steps``), each loss divided by the count, so the
        gradients are their mean. Returns the mean loss (detached) and, for a closure, the batches
        kept on the device. ``after_backward`` runs after each micro-batch's backward."""
        count = count or self.config.accumulation_steps
        self.optimizer.zero_grad(set_to_none=True)
        kept: list[Any] = []  # the micro-batches a closure replays
        total: torch.Tensor | None = None
        seen = 0
        for batch in micro_batches:
            batch = to_device(batch, self.device, self.config)
            if self.closure:
                kept.append(batch)
            # DDP: gradients are reduced over the ranks once, in the last micro-batch's backward.
            with _no_sync(self.model) if seen < count - 1 and not self.closure else contextlib.nullcontext():
                loss = self._forward_backward(batch, count)
            if after_backward is not None:
                after_backward()
            total = loss if total is None else total + loss
            seen += 1
            if seen == count:
                break
        if seen < count:
            raise ValueError(f"an optimizer step takes {count} micro-batches (accumulation_steps), got {seen}")
        assert total is not None
        return total.float(), kept

    def _forward_backward(self, batch: Any, count: int | None = None) -> torch.Tensor:
        """Forward and loss under autocast, backward of loss / count (default accumulation_steps); that
        share, detached."""
        with autocast(self.config, self.device):
            loss = self.loss(self.model, batch)
        check_loss(loss)
        scaled = loss / (count or self.config.accumulation_steps)
        if self.scaler is not None:
            self.scaler.scale(scaled).backward()
        else:
            scaled.backward()
        return scaled.detach()

    def _replay(self, batches: list[Any]) -> torch.Tensor:
        """The closure: gradients zeroed, forward and backward again over the step's micro-batches."""
        with torch.enable_grad():
            self.optimizer.zero_grad(set_to_none=True)
            total = torch.zeros((), device=self.device)
            for batch in batches:
                total = total + self._forward_backward(batch)
            return total

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's, the scheduler's and the GradScaler's state, for a checkpoint."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])


def _no_sync(model: Any) -> contextlib.AbstractContextManager[Any]:
    """DistributedDataParallel's no_sync (the backward accumulates without reducing over the ranks); nothing
    for any other model, a compiled one included (it reduces every backward: correct, only slower)."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return model.no_sync()
    return contextlib.nullcontext()


def check_loss(loss: Any) -> None:
    """The workload's loss must be a scalar tensor that backward() can start from."""
    if not isinstance(loss, torch.Tensor):
        raise WorkloadError(f"loss must return a scalar tensor, got {type(loss).__name__} {loss!r:.60}")
    if loss.numel() != 1:
        raise WorkloadError(f"loss must return a scalar tensor, got shape {tuple(loss.shape)}")
    if not loss.requires_grad:
        raise WorkloadError("loss must return a tensor that requires grad (it was computed without the model's graph)")


def _schedule_finished(scheduler: Any) -> bool:
    """OneCycleLR raises when stepped past total_steps; a run that outlasts it stays at the final LR."""
    total = getattr(scheduler, "total_steps", None)
    return total is not None and scheduler.last_epoch + 1 >= total


def evaluate(
    evaluate_fn: Callable[[Any], Any], model: torch.nn.Module, config: TrainConfig, device: torch.device | str
) -> dict[str, float]:
    """The workload's evaluation: the model in eval mode, under no_grad and the config's autocast,
    back in training mode after. Returns its metrics as {name: value} (a bare number is "metric")."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast(config, device):
            result = evaluate_fn(model)
    finally:
        model.train(was_training)
    if isinstance(result, dict):
        return {str(key): float(value) for key, value in result.items()}
    if result is None:
        return {}
    return {"metric": float(result)}


class Batches:
    """Endless micro-batches from a DataLoader, pass after pass, counting samples, the workload's
    units and the seconds spent waiting for data (host side: no device sync)."""

    def __init__(self, loader: torch.utils.data.DataLoader, count: Callable[[Any], float] | None = None) -> None:
        self.loader = loader
        self.count = count
        self.batch_size = int(loader.batch_size or 1)
        self.passes = 0  # completed passes over the dataset
        self._iterator: Iterator[Any] = iter(loader)
        self.reset_counters()

    def reset_counters(self) -> None:
        self.samples = 0
        self.units = 0.0
        self.wait_seconds = 0.0

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> Any:
        begin = time.perf_counter()
        try:
            batch = next(self._iterator)
        except StopIteration:  # epoch boundary: a new pass, as the full run makes
            self.passes += 1
            if isinstance(self.loader.sampler, torch.utils.data.distributed.DistributedSampler):
                self.loader.sampler.set_epoch(self.passes)  # each pass shuffles the shards anew
            self._iterator = iter(self.loader)
            batch = next(self._iterator)
        self.wait_seconds += time.perf_counter() - begin
        self.samples += self.batch_size
        self.units += float(self.count(batch)) if self.count else self.batch_size
        return batch


class Training:
    """A Workload with a TrainConfig applied: model, DataLoader, optimizer, OneCycle, one step at a
    time. The trial harness, the LR range test and ``autotune train`` all run through this."""

    def __init__(
        self,
        workload: Workload,
        config: TrainConfig,
        device: torch.device | str = "cpu",
        *,
        total_steps: int | None = None,
        one_cycle_args: dict[str, Any] | None = None,
    ) -> None:
        """``total_steps``: the OneCycle schedule's length in optimizer steps (None: no schedule,
        a constant LR of max_lr). ``one_cycle_args``: an export's ``one_cycle:`` section."""
        self.workload = workload
        self.config = config
        self.device = torch.device(device)
        # The workload's own knobs go to their factories: model.X to model(X=...), and so on.
        self.model = prepare_model(
            workload.model(**config.factory_kwargs("model")),
            config,
            self.device,
            gradient_checkpointing=workload.gradient_checkpointing,
        )
        self.optimizer = optimizer_implementation(
            (workload.optimizer or default_optimizer)(
                trainable_parameters(self.model), config.max_lr, **config.factory_kwargs("optimizer")
            ),
            config,
        )
        self.cycle_momentum = cycles_momentum(self.optimizer)
        self.scheduler = self._one_cycle_schedule(total_steps, one_cycle_args)
        # DistributedDataParallel in a process group of several ranks; self.model stays the module itself.
        self.forward_model = compile_model(distributed_model(self.model, self.device), config)
        self.dataset = workload.dataset(**config.factory_kwargs("dataset"))
        self.loader = dataloader(self.dataset, config, self.device, collate_fn=workload.collate_fn)
        if len(self.loader) == 0:
            raise WorkloadError(f"dataset has {len(self.dataset)} samples, fewer than batch_size {config.batch_size}")
        self.dataset_size = len(self.dataset)
        self.batches = Batches(self.loader, workload.count)
        self.train_step = TrainStep(
            self.forward_model,
            workload.loss,
            self.optimizer,
            config,
            self.device,
            scheduler=self.scheduler,
            closure=workload.step_closure,
            after_step=self._after_step if workload.after_step else None,
        )

    def _one_cycle_schedule(
        self, total_steps: int | None, one_cycle_args: dict[str, Any] | None
    ) -> torch.optim.lr_scheduler.OneCycleLR | None:
        """The OneCycle schedule over ``total_steps`` (None: none), with the export's arguments it takes."""
        if total_steps is None:
            return None
        args = {
            key: value
            for key, value in (one_cycle_args or {}).items()
            if key in ONE_CYCLE_DEFAULTS or key in ("max_lr", "cycle_momentum")
        }
        args.setdefault("cycle_momentum", self.cycle_momentum)
        return one_cycle(self.optimizer, self.config, total_steps, **args)

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self.train_step.scaler

    def _after_step(self, _forward_model: Any, optimizer: Any) -> None:
        assert self.workload.after_step is not None
        self.workload.after_step(self.model, optimizer)  # the model itself, not its compiled wrapper

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.dataset_size, self.config)

    def step(self) -> torch.Tensor:
        """One optimizer step on the next ``accumulation_steps`` micro-batches; the mean loss."""
        return self.train_step(self.batches)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def scale(self) -> float | None:
        """The GradScaler's current scale (fp16 only); reading it synchronises the device."""
        return None if self.scaler is None else float(self.scaler.get_scale())


EVAL_SEED = 12345  # the fixed samples are the same in every run of every config


def fixed_samples_loss(training: Training, samples: int) -> float:
    """The workload's loss over the same ``samples`` samples of ``training``'s dataset (drawn with a fixed
    seed, whatever the run's), the model in eval mode, in fp32, under no_grad: what runs of different
    configs reached, compared on the same data."""
    dataset = training.dataset
    count = min(samples, len(dataset))
    indices = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(EVAL_SEED))[:count].tolist()
    fp32 = dataclasses.replace(training.config, precision="fp32", num_workers=0)
    loader = dataloader(
        torch.utils.data.Subset(dataset, indices),
        fp32,
        training.device,
        shuffle=False,
        drop_last=False,
        collate_fn=training.workload.collate_fn,
        shard=False,  # every rank's loss over the same samples
    )
    model = training.model
    model.eval()
    total, seen = 0.0, 0
    try:
        with torch.no_grad():
            for batch in loader:
                size = _batch_length(batch)
                loss = training.workload.loss(model, to_device(batch, training.device, fp32))
                total += float(loss) * size  # .item(): one sync per batch
                seen += size
    finally:
        model.train()
    return total / max(1, seen)


def _batch_length(batch: Any) -> int:
    """Samples in a collated batch: the first dimension of its first tensor, or a list's length."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, dict) and batch:
        return _batch_length(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)) and batch:
        if isinstance(batch, list) and not isinstance(batch[0], torch.Tensor):
            return len(batch)  # a list of samples' records (per-image target dicts, ...)
        return _batch_length(batch[0])
    return 1
