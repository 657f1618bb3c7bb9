"""The loop of ``autotune train``: optimizer steps through autotune.training._apply, progress reports,
checkpoints, and a clean stop between steps on SIGINT or SIGTERM."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from autotune.exceptions import CheckpointError, TrainingError
from autotune.training import _checkpoint as checkpoints
from autotune.training import _group
from autotune.training._apply import Training, backend_flags, evaluate
from autotune.training._run_plan import (
    Deadline,
    Progress,
    RunLength,
    RunPlan,
    RunStart,
    TrainListener,
    check_resumed_length,
    make_record,
    run_length,
)
from autotune.training._run_record import RunCounters, RunRecord, now, project_seconds, ratio

# Untimed steps at each start, as a trial's warm-up (MeasureSettings.warmup_steps; compile adds one):
# worker start, torch.compile, cuDNN autotune. The steady-state rate leaves them out, as the trial did.
WARMUP_STEPS = 1  # as a trial: MeasureSettings().warmup_steps
FINAL_LOSS_STEPS = 20  # the record's final loss: the mean over the last this many steps
CURVE_POINTS = 200  # points of the record's loss curve, about


def run(plan: RunPlan, listener: TrainListener) -> RunRecord:
    started_at = now()
    begin = time.perf_counter()
    saved = checkpoints.load_checkpoint(plan.resume_from) if plan.resume_from is not None else None
    if saved is not None and plan.resume_from is not None:
        checkpoints.check_same_config(plan.resume_from, saved["config"], plan.config.to_dict())
    if plan.options.seed is not None:
        _seed(plan.options.seed)
    device = torch.device(plan.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dataset = plan.workload.dataset()  # built once: its size sets the run's length before Training uses it
    length = run_length(plan, len(dataset))
    if saved is not None and plan.resume_from is not None:
        length = check_resumed_length(plan.resume_from, saved["length"], length, plan.options)
    # The config's max_lr rules; the rest of the export's one_cycle: shapes the schedule.
    one_cycle = {key: value for key, value in plan.one_cycle.items() if key not in ("max_lr", "total_steps")}
    with backend_flags(plan.config, device):
        training = Training(
            dataclasses.replace(plan.workload, dataset=lambda: dataset),
            plan.config,
            device,
            total_steps=length.schedule_steps,
            one_cycle_args=one_cycle,
        )
        counters = RunCounters()
        if saved is not None:
            _restore(training, saved, plan.resume_from)
            counters = RunCounters.from_json(saved["counters"])
        counters.starts += 1
        counters.setup_seconds += time.perf_counter() - begin
        loop = _Loop(plan, length, training, counters, listener)
        with _stop_on_signals() as stop:
            listener.on_start(loop.describe_start(plan.resume_from))
            final_loss = loop.run(stop)
            interrupted = stop.signal if not loop.done() else None  # a signal after the last step stops nothing
            path = loop.save()  # at the end, or on the signal: before the handlers are restored
    return make_record(
        plan,
        length,
        counters,
        dataset_size=training.dataset_size,
        micro_batches=len(training.loader),
        unit=plan.workload.unit,
        status="interrupted" if interrupted else "finished",
        signal_name=interrupted,
        final_loss=final_loss,
        checkpoint=path,
        started_at=started_at,
    )


class _Stop:
    signal: str | None = None


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_Stop]:
    """SIGINT and SIGTERM set a flag that the loop checks between steps (Python runs signal
    handlers in the main thread only: elsewhere the signals keep their usual effect)."""
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, _frame: Any) -> None:
        stop.signal = signal.Signals(signum).name

    previous = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    for number in previous:
        signal.signal(number, handler)
    try:
        yield stop
    finally:
        for number, old in previous.items():
            signal.signal(number, old if old is not None else signal.SIG_DFL)


class _Loop:
    """One start of the run: its steps, reports and checkpoints, its figures added to the counters."""

    def __init__(
        self, plan: RunPlan, length: RunLength, training: Training, counters: RunCounters, listener: TrainListener
    ) -> None:
        self.plan, self.length, self.training, self.counters, self.listener = plan, length, training, counters, listener
        self.options = plan.options
        self.warmup_steps = WARMUP_STEPS + (1 if plan.config.compile != "off" else 0)
        self.base = dataclasses.replace(counters)  # the counters as this start found them
        self.start = time.perf_counter()  # set again when the first step begins (run)
        # When the warm-up ended: time, samples, units, steps, paused seconds so far.
        self.steady: tuple[float, int, float, int, float] | None = None
        self.paused_seconds = 0.0  # this start's checkpoint saves and evaluations: not training throughput
        workload, micro_batches = plan.workload, len(training.loader)
        self.evaluate_every = (
            max(1, round(workload.evaluate_every * micro_batches / plan.config.accumulation_steps))
            if workload.evaluate is not None
            else None
        )
        self.losses: collections.deque[torch.Tensor] = collections.deque(maxlen=FINAL_LOSS_STEPS)
        self.report_losses: list[torch.Tensor] = []
        self.curve_losses: list[torch.Tensor] = []
        self.curve_every = max(1, (length.target_steps or length.schedule_steps) // CURVE_POINTS)
        self.last_report = (self.start, counters.steps, 0, 0.0)  # time, steps, samples, units
        self.last_save = (self.start, counters.steps)

    def describe_start(self, resumed_from: Path | None) -> RunStart:
        measured, full_run = self.plan.measured, self.plan.full_run
        target = self.length.target_steps or self.length.schedule_steps
        return RunStart(
            workload=self.plan.workload_spec,
            device=self.plan.device,
            config=self.plan.config,
            length=self.length,
            step=self.counters.steps,
            resumed_from=resumed_from,
            unit=self.plan.workload.unit,
            dataset_size=self.training.dataset_size,
            measured_samples_per_second=measured.get("samples_per_second"),
            projected_seconds=(
                self.length.time_limit_seconds
                if self.length.stop == "time"
                else project_seconds(target, self.plan.config.effective_batch_size, measured)
            ),
            deadline_seconds=full_run.get("deadline_seconds"),
            safety_margin_seconds=full_run.get("safety_margin_seconds") or 0.0,
            measured_unit_per_second=measured.get("unit_per_second"),
        )

    def elapsed(self, at: float | None = None) -> float:
        return self.base.seconds + (time.perf_counter() if at is None else at) - self.start

    def done(self) -> bool:
        if self.length.stop == "time":
            assert self.length.time_limit_seconds is not None
            return self.elapsed() >= self.length.time_limit_seconds
        assert self.length.target_steps is not None
        return self.counters.steps >= self.length.target_steps

    def run(self, stop: _Stop) -> float | None:
        """Steps until the run's length is reached or a signal arrives; the final loss."""
        self.start = time.perf_counter()
        self.last_report = (self.start, self.counters.steps, 0, 0.0)
        self.last_save = (self.start, self.counters.steps)
        steps_here = 0
        while not self.done() and stop.signal is None:
            try:
                loss = self.training.step().detach()
            except Exception:
                if stop.signal is not None:  # e.g. a DataLoader worker that the same Ctrl-C ended
                    break
                raise
            steps_here += 1
            self.counters.steps += 1
            self.losses.append(loss)
            self.report_losses.append(loss)
            self.curve_losses.append(loss)
            if len(self.curve_losses) == self.curve_every:
                self._curve_point()
            if steps_here == self.warmup_steps:
                _check_finite(float(loss), self.counters.steps)  # .item(): a device sync, the warm-up is done
                at = time.perf_counter()
                self.counters.warmup_seconds += at - self.start
                batches = self.training.batches
                self.steady = (at, batches.samples, batches.units, self.counters.steps, self.paused_seconds)
            if self.evaluate_every is not None and self.counters.steps % self.evaluate_every == 0:
                self._evaluate()
            if self._checkpoint_due():
                path = self.save()
                self.listener.on_checkpoint(path, self.counters.steps)
            if time.perf_counter() - self.last_report[0] >= self.listener.progress_interval_seconds:
                self._report()
        if stop.signal is None and self.evaluate_every is not None and self._last_evaluated() != self.counters.steps:
            self._evaluate()  # and at the end
        self._update()
        if not self.losses:
            return None
        final = float(torch.stack(list(self.losses)).float().mean())
        _check_finite(final, self.counters.steps)
        return final

    def _curve_point(self) -> None:
        """A point of the loss curve: the mean loss of the steps since the last one (a device sync)."""
        loss = float(torch.stack(self.curve_losses).float().mean())
        self.curve_losses = []
        self.counters.curve.append({"step": self.counters.steps, "seconds": self.elapsed(), "loss": loss})

    def save(self) -> Path:
        """A checkpoint of the run as it stands (its counters brought up to date first); in a data-parallel
        run, rank 0's alone (the other ranks hold the same weights) and the others' path is the folder."""
        self._update()
        if not _group.leads():
            return Path(self.options.checkpoint_dir)
        begin = time.perf_counter()
        training = self.training
        path = checkpoints.save_checkpoint(
            self.options.checkpoint_dir,
            {
                "step": self.counters.steps,
                "passes": self.counters.passes,
                "elapsed_seconds": self.counters.seconds,
                "config": self.plan.config.to_dict(),
                "workload": self.plan.workload_spec,
                "length": self.length.to_json(),
                "counters": self.counters.to_json(),
                "model": training.model.state_dict(),
                "train_step": training.train_step.state_dict(),
                "rng": checkpoints.rng_state(),
                "saved_at": now(),
            },
        )
        seconds = time.perf_counter() - begin
        self.paused_seconds += seconds
        self.counters.checkpoint_seconds += seconds
        self.last_save = (time.perf_counter(), self.counters.steps)
        return path

    def _evaluate(self) -> None:
        """The workload's evaluate (eval mode, no_grad, the config's autocast), timed apart from training."""
        _synchronize(self.training.device)
        begin = time.perf_counter()
        assert self.plan.workload.evaluate is not None  # scheduled only for a workload that has one
        metrics = evaluate(self.plan.workload.evaluate, self.training.model, self.plan.config, self.training.device)
        _synchronize(self.training.device)
        seconds = time.perf_counter() - begin
        self.paused_seconds += seconds
        self.counters.evaluation_seconds += seconds
        epoch = self.counters.steps * self.plan.config.accumulation_steps / len(self.training.loader)
        evaluation = {"step": self.counters.steps, "epoch": epoch, "metrics": metrics}
        self.counters.evaluations.append(evaluation)
        self.listener.on_evaluation(evaluation)

    def _last_evaluated(self) -> int | None:
        return self.counters.evaluations[-1]["step"] if self.counters.evaluations else None

    def _checkpoint_due(self) -> bool:
        every_steps, every_seconds = self.options.checkpoint_every_steps, self.options.checkpoint_every_seconds
        if every_steps is not None and self.counters.steps - self.last_save[1] >= every_steps:
            return True
        return every_seconds is not None and time.perf_counter() - self.last_save[0] >= every_seconds

    def _update(self) -> None:
        """The counters brought up to date, the device synchronised so that the time is complete."""
        _synchronize(self.training.device)
        at = time.perf_counter()
        batches, base, counters = self.training.batches, self.base, self.counters
        ranks = self.plan.config.world_size  # a data-parallel run's ranks step together, each on its shard
        counters.seconds = self.elapsed(at)
        counters.samples = base.samples + batches.samples * ranks
        counters.units = base.units + batches.units * ranks
        counters.data_wait_seconds = base.data_wait_seconds + batches.wait_seconds
        counters.passes = base.passes + batches.passes
        if self.steady is not None:
            steady_at, samples, units, _, paused = self.steady  # saves and evaluations are left out of the rate
            counters.steady_seconds = base.steady_seconds + at - steady_at - (self.paused_seconds - paused)
            counters.steady_samples = base.steady_samples + (batches.samples - samples) * ranks
            counters.steady_units = base.steady_units + (batches.units - units) * ranks

    def _report(self) -> None:
        loss = float(torch.stack(self.report_losses).float().mean())  # a device sync
        _check_finite(loss, self.counters.steps)
        self.report_losses = []
        at = time.perf_counter()
        batches, counters = self.training.batches, self.counters
        last_at, _, last_samples, last_units = self.last_report
        seconds = at - last_at
        self.last_report = (at, counters.steps, batches.samples, batches.units)
        # The pace after the warm-up (a first step that compiles says nothing of the rest); no ETA before it.
        steps_per_second = None
        if self.steady is not None and at > self.steady[0] and counters.steps > self.steady[3]:
            steps_per_second = (counters.steps - self.steady[3]) / (at - self.steady[0])
        elapsed = self.elapsed(at)
        if self.length.stop == "time":
            assert self.length.time_limit_seconds is not None
            eta: float | None = max(0.0, self.length.time_limit_seconds - elapsed)
        else:
            assert self.length.target_steps is not None
            eta = (self.length.target_steps - counters.steps) / steps_per_second if steps_per_second else None
        self.listener.on_progress(
            Progress(
                step=counters.steps,
                total_steps=self.length.target_steps,
                elapsed_seconds=elapsed,
                time_limit_seconds=self.length.time_limit_seconds,
                epoch=counters.steps * self.plan.config.accumulation_steps / len(self.training.loader),
                samples_per_second=ratio(batches.samples - last_samples, seconds),
                unit_per_second=ratio(batches.units - last_units, seconds),
                unit=self.plan.workload.unit,
                loss=loss,
                eta_seconds=eta,
                deadline=self._deadline(elapsed, steps_per_second),
            )
        )

    def _deadline(self, elapsed: float, steps_per_second: float | None) -> Deadline | None:
        full_run = self.plan.full_run
        deadline = full_run.get("deadline_seconds")
        if deadline is None:
            return None
        limit = deadline - (full_run.get("safety_margin_seconds") or 0.0)
        finish = None
        if self.length.full_run_steps is not None and steps_per_second:
            finish = elapsed + max(0, self.length.full_run_steps - self.counters.steps) / steps_per_second
        return Deadline(
            deadline_seconds=deadline,
            limit_seconds=limit,
            remaining_seconds=deadline - elapsed,
            finish_seconds=finish,
            on_track=None if finish is None else finish <= limit,
        )


def _restore(training: Training, saved: dict[str, Any], path: Path | None) -> None:
    try:
        training.model.load_state_dict(saved["model"])
        training.train_step.load_state_dict(saved["train_step"])
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: does not fit this workload's model and optimizer ({first})") from None
    # The interrupted pass is not replayed: this start begins a fresh, reshuffled pass.
    checkpoints.restore_rng_state(saved["rng"])


def _seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # the CUDA generators too
    try:
        import numpy
    except ImportError:
        return
    numpy.random.seed(seed)


def _check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise TrainingError(f"the loss became {loss} by step {step}; the run stopped (earlier checkpoints are kept)")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the time read next covers every step issued so far
