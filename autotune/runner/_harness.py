"""Inside the trial process: apply a TrainConfig to the workload, warm up, then time windows.

Every knob acts through autotune.training._apply, the module the full run uses too; this module only
measures. Every figure sent back is measured here; the parent only decides (prune, kill, record).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from autotune.knobs._config import TrainConfig
from autotune.runner._memory import process_peak_rss
from autotune.runner._outcome import MeasureSettings, TrialJob
from autotune.training import _noise_scale as noise_scale
from autotune.training._apply import Training, backend_flags, evaluate
from autotune.training._distributed import Group, rank_device
from autotune.workload._workload import Workload

Emit = Callable[[dict[str, Any]], None]


class Diverged(Exception):
    """The loss became NaN or infinite."""


@contextlib.contextmanager
def trial_training(job: TrialJob, workload: Workload, emit: Emit, *, one_cycle_steps: int | None) -> Iterator[Training]:
    """The workload built with the job's config, inside the config's backend flags, on a device
    held to the trial's memory budget."""
    config = TrainConfig.from_dict(job.config)
    if job.step_closure is not None and job.step_closure != workload.step_closure:
        workload = dataclasses.replace(workload, step_closure=job.step_closure)
    torch.manual_seed(job.measure.seed)
    group = Group.current()  # a data-parallel trial's ranks joined it before (autotune.runner._child)
    device = rank_device(job.device) if group.is_group else torch.device(job.device)
    _configure_device(device, job.memory_budget_bytes)
    started: dict[str, Any] = {"event": "started", "device": _device_name(device), "torch_version": torch.__version__}
    if group.is_group:  # rank 0's device names the group's
        started.update(world_size=group.world_size, backend=group.backend)
    emit({**started, "unit": workload.unit})
    with backend_flags(config, device):
        yield Training(workload, config, device, total_steps=one_cycle_steps)


def run_harness(job: TrialJob, workload: Workload, emit: Emit) -> None:
    started = time.perf_counter()  # warm-up counts building the model, data and optimizer too
    with trial_training(job, workload, emit, one_cycle_steps=job.measure.max_steps) as training:
        _measure(job, training, emit, started)


def _measure(job: TrialJob, training: Training, emit: Emit, started: float) -> None:
    """The trial's measurement: warm-up, timed windows, the evaluation, the noise scale, each figure emitted.
    In a data-parallel trial every figure is the group's: memory and seconds the largest rank's."""
    group = Group.current()
    guard = _DivergenceGuard(job.measure.divergence_factor)
    loss_start, last_step_seconds = _warm_up(job, training, emit, started, guard, group)
    loss_end, skipped_steps = _timed_windows(job, training, emit, guard, loss_start, group, last_step_seconds)
    evaluation_seconds = _timed_evaluation(training)
    device_peak = _device_peak_memory(training.device)  # what the run measured needs, before the noise groups
    # The noise groups run backward passes that do not step: in a group, DDP would reduce them in each
    # rank's own rhythm, so a data-parallel trial measures none.
    noise = None if group.is_group else _noise(job, training)
    peaks = group.max([evaluation_seconds or 0.0, device_peak or 0, process_peak_rss(), float(skipped_steps)])
    emit(
        {
            "event": "done",
            "noise": noise,
            "evaluation_seconds": None if evaluation_seconds is None else peaks[0],
            "loss_end": loss_end,
            "scaler_skipped_steps": int(peaks[3]) if training.scaler is not None else None,
            "device_peak_memory_bytes": None if device_peak is None else int(peaks[1]),  # the largest rank's
            "process_peak_rss_bytes": int(peaks[2]),
        }
    )


def _warm_up(
    job: TrialJob, training: Training, emit: Emit, started: float, guard: _DivergenceGuard, group: Group
) -> tuple[float | None, float]:
    """The untimed warm-up steps, each emitted (a group's: samples summed, seconds the slowest rank's, the
    loss the ranks' mean), then the warm-up's figures; the first step's loss and the last step's seconds."""
    measure = job.measure
    config, batches, step = training.config, training.batches, training.step
    # Warm-up: worker start, torch.compile, cuDNN autotune, allocator growth. Not timed as throughput.
    warmup_steps = max(1, measure.warmup_steps) + (1 if config.compile != "off" else 0)
    step_seconds = []
    loss_start = None
    for index in range(warmup_steps):
        batches.reset_counters()
        begin = time.perf_counter()
        loss = step()
        value = float(loss)  # .item(): synchronises the device, so the step's time is complete
        seconds = time.perf_counter() - begin
        (value,) = group.mean([value])
        samples, units = group.sum([batches.samples, batches.units])
        seconds, wait_seconds = group.max([seconds, batches.wait_seconds])
        step_seconds.append(seconds)
        guard.check(value, f"warm-up step {index + 1}")
        loss_start = value if loss_start is None else loss_start
        # Lets the parent give up early on a config that cannot reach the slow threshold.
        emit(
            {
                "event": "warmup_step",
                "index": index,
                "samples": int(samples),
                "units": units,
                "seconds": step_seconds[-1],
                "data_wait_seconds": wait_seconds,
                "compiled": config.compile != "off",
            }
        )
    compile_seconds = 0.0
    if config.compile != "off":
        steady = step_seconds[-1]
        compile_seconds = max(0.0, sum(step_seconds[:-1]) - steady * (len(step_seconds) - 1))
    emit(
        {
            "event": "warmup",
            "warmup_seconds": group.max([time.perf_counter() - started])[0],
            "compile_seconds": compile_seconds,
            "loss_start": loss_start,
            "dataset_size": training.dataset_size,
            "cycle_momentum": training.cycle_momentum,
            # Adam's kind (betas) takes the square-root LR rule for a larger batch; SGD's AdaScale's gain.
            "adaptive_optimizer": "betas" in training.optimizer.defaults,
        }
    )
    return loss_start, step_seconds[-1]


def _timed_windows(
    job: TrialJob,
    training: Training,
    emit: Emit,
    guard: _DivergenceGuard,
    loss_start: float | None,
    group: Group,
    last_step_seconds: float,
) -> tuple[float | None, int]:
    """Timed windows until the measure has enough of them, each emitted; the last window's mean loss
    (the warm-up's without one) and the optimizer steps the GradScaler skipped.

    A group's window is the sum of its ranks' samples over the slowest rank's seconds. Its ranks run the
    same number of steps in each window (DDP reduces every step's gradients: a rank that stopped early
    would leave the others waiting), planned from the previous window's (or the last warm-up step's)
    seconds per step, which every rank has from the same reduction."""
    measure = job.measure
    device, batches = training.device, training.batches
    loss_end = loss_start
    skipped_steps = 0
    rates: list[float] = []
    window = -1
    step_seconds = last_step_seconds if group.is_group else None  # the same on every rank: reduced
    while not measure.enough_windows(rates, job.rank_against):
        window += 1
        scale_before = training.scale()
        batches.reset_counters()
        _synchronize(device)  # window edge: no earlier work leaks into this window
        begin = time.perf_counter()
        planned = None if step_seconds is None else _planned_steps(measure, step_seconds)
        steps, loss_sum = _window_steps(measure, training.step, device, begin, planned)
        _synchronize(device)  # window edge: every step issued above has finished on the device
        seconds = time.perf_counter() - begin  # wall seconds, data loading included
        (loss_end,) = group.mean([float(loss_sum) / steps])
        samples, units = group.sum([batches.samples, batches.units])  # the group's: summed over ranks
        seconds, wait_seconds = group.max([seconds, batches.wait_seconds])  # the slowest rank's
        step_seconds = seconds / steps if group.is_group else None
        guard.check(loss_end, f"timed window {window + 1}")
        skipped_steps += _skipped_by_scaler(scale_before, training.scale())
        rates.append(samples / seconds)
        emit(
            {
                "event": "window",
                "index": window,
                "steps": steps,
                "samples": int(samples),
                "units": units,
                "seconds": seconds,
                "data_wait_seconds": wait_seconds,
                "loss": loss_end,
            }
        )
    return loss_end, skipped_steps


def _planned_steps(measure: MeasureSettings, step_seconds: float) -> int:
    """The steps that fill a window at ``step_seconds`` a step, within the window's minimum and maximum."""
    wanted = math.ceil(measure.window_seconds / step_seconds) if step_seconds > 0 else measure.max_window_steps
    return max(measure.min_window_steps, min(measure.max_window_steps, wanted))


def _window_steps(
    measure: MeasureSettings,
    step: Callable[[], torch.Tensor],
    device: torch.device,
    begin: float,
    planned: int | None = None,
) -> tuple[int, torch.Tensor]:
    """One window's steps, from ``begin``: at least its minimum, then until its time or its maximum (or
    exactly ``planned``); the steps and their summed loss, on the device (no synchronisation inside the
    window)."""
    steps = 0
    loss_sum = torch.zeros((), device=device)
    while (planned is not None and steps < planned) or (
        planned is None
        and (
            steps < measure.min_window_steps
            or (steps < measure.max_window_steps and time.perf_counter() - begin < measure.window_seconds)
        )
    ):
        loss_sum += step().detach().float()
        steps += 1
    return steps, loss_sum


def _timed_evaluation(training: Training) -> float | None:
    """The seconds of the workload's evaluation, run once; None for a workload without one."""
    if training.workload.evaluate is None:
        return None
    device = training.device
    # The full run's evaluation, once, timed for its projection (evaluations x this).
    _synchronize(device)
    begin = time.perf_counter()
    evaluate(training.workload.evaluate, training.model, training.config, device)
    _synchronize(device)
    return time.perf_counter() - begin


def _noise(job: TrialJob, training: Training) -> dict[str, Any] | None:
    """The gradient noise scale measured for ``job.noise_seconds``, an error where it failed, None where not asked."""
    if not job.noise_seconds:
        return None
    # After everything timed: groups of the config's micro-batches that do not step (noise_scale).
    try:
        return noise_scale.measure(training, job.noise_seconds)
    except Exception as exc:  # noqa: BLE001 - the speed was measured; the noise figure is recorded as missing
        return {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"}


def _configure_device(device: torch.device, memory_budget_bytes: int | None) -> None:
    """The trial's device, its memory budget enforced, its peak counter reset (the knobs' backend
    flags are set by autotune.training._apply.backend_flags)."""
    if device.type != "cuda":
        return
    torch.cuda.set_device(device)
    if memory_budget_bytes is not None:
        total = torch.cuda.get_device_properties(device).total_memory
        # Enforce the budget for real: allocations past it raise OutOfMemoryError.
        torch.cuda.set_per_process_memory_fraction(min(1.0, memory_budget_bytes / total), device)
    torch.cuda.reset_peak_memory_stats(device)


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
