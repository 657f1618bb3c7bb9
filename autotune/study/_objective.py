"""The search's objective: one Optuna trial per measured training run."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from autotune.exceptions import Terminated
from autotune.knobs._units import format_duration, format_size
from autotune.runner import Status, TrialJob, TrialOutcome, WindowResult, run_trial
from autotune.runner._runner import process_crashed
from autotune.store import _records
from autotune.store._records import TrialRecord, TrialStatus, write_trial
from autotune.study import _curves
from autotune.study._checks import RepeatedErrors
from autotune.study._notes import explain_study, explain_trial
from autotune.study._recovery import SearchProcess, claim_trial, mark_interrupted, recover_interrupted
from autotune.study._slots import slot_devices
from autotune.study._worker import device_kind

if TYPE_CHECKING:
    import optuna

    from autotune.knobs._config import TrainConfig
    from autotune.study._loop import SearchListener, SearchOptions, SearchPlan

FIGURE_EVERY = 5  # trials between refreshes of the figures stored for optuna-dashboard
# Seconds between two refreshes of the study's note by one process: each refresh reads every trial and
# rewrites the note, which many workers doing after every trial would make the storage's main load.
# The search's end writes the final one.
NOTE_EVERY_SECONDS = 30.0
BASELINE_NOISE_WINDOWS = 3  # the baseline's noise-scale measurement, in windows' time


_COMPILE_ERRORS = (
    "torch/_dynamo",
    "torch/_inductor",
    "torch._dynamo",
    "torch._inductor",
    "InductorError",
    "BackendCompilerFailed",
    "CppCompileError",
)


def _compile_failed(outcome: TrialOutcome) -> bool:
    """An error raised by torch.compile (Dynamo or Inductor) rather than by the workload."""
    return outcome.status is Status.ERROR and any(
        marker in outcome.reason or marker in outcome.log_tail for marker in _COMPILE_ERRORS
    )


class TrialError(Exception):
    """A trial that crashed, raised, or died: Optuna records it as FAIL and the study goes on."""


class Objective:
    """One Optuna trial of the search: sample (or take the baseline), skip what is proven out of
    memory or to crash, run in a fresh process, then record the figures, constraints and verdict."""

    def __init__(
        self,
        options: SearchOptions,
        plan: SearchPlan,
        listener: SearchListener,
        deadline: float | None,
        *,
        storage: Any = None,
        process: SearchProcess | None = None,
    ):
        self.options = options
        self.plan = plan
        self.listener = listener
        self.deadline = deadline
        self.storage = storage
        self.process = process or SearchProcess.current()
        self.trials_run = 0
        self.repeated_errors = RepeatedErrors()
        self._noted_at: float | None = None  # when this process last wrote the study's note (time.monotonic)
        self._figures_at = 0  # this process's trials run when it last stored the figures

    def __call__(self, trial: optuna.Trial) -> float:
        claim_trial(trial, self.process)  # first: a search that dies from here on leaves a trial others can end
        try:
            return self._run(trial)
        except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM: the trial process is already killed
            how = "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"
            mark_interrupted(trial, f"the search was stopped ({how}) while this trial ran")
            raise

    def recover(self, study: optuna.Study) -> None:
        """End the trials that dead search processes left running, and enqueue their configs again."""
        if self.storage is None:
            return
        for number in recover_interrupted(study, self.storage):
            self.listener.on_note(
                f"trial #{number} was interrupted (its search process is gone); its config runs again"
            )

    def _run(self, trial: optuna.Trial) -> float:
        import optuna

        is_baseline = bool(TrialRecord.of(trial).baseline)
        config = self._config(trial, is_baseline)
        budgets = self.plan.budgets
        write_trial(
            trial,
            config=config.to_dict(),
            memory_budget_bytes=budgets.memory_budget_bytes,
            device_kind=device_kind(self.plan.device),
            devices=slot_devices(self.plan.device),
        )
        self.listener.on_trial_start(trial.number, config, is_baseline)

        finished = trial.study.get_trials(
            deepcopy=False, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        )
        measured = None if is_baseline else _records.measured_before(finished, config.to_dict())
        if measured is not None:
            return _answered_from(trial, measured, self.plan.unit)
        outcome = self._settled(trial, config, finished, is_baseline)
        if outcome is None:
            outcome = self._measured(trial, config, finished, is_baseline)
        return self._record(trial, outcome)

    def _config(self, trial: optuna.Trial, is_baseline: bool) -> TrainConfig:
        """The trial's config: the baseline (its fixed params recorded) or the sampler's."""
        if is_baseline:
            for name in self.plan.space.fixed_params(self.plan.baseline):
                self.plan.space.knobs[name].suggest(trial)  # the enqueued value: records the params
            return self.plan.baseline
        return self.plan.space.suggest(trial, self.plan.baseline)

    def _settled(
        self, trial: optuna.Trial, config: TrainConfig, finished: list[optuna.trial.FrozenTrial], is_baseline: bool
    ) -> TrialOutcome | None:
        """The outcome that earlier trials, or the curves fitted to them, settle without a process; None
        when the config has to run."""
        budgets = self.plan.budgets
        proof = _records.proven_out_of_memory(finished, config.to_dict(), budgets.memory_budget_bytes)
        crash = _records.crashed_before(finished, config.to_dict())
        compile_failure = _records.failed_compile(finished, config.compile)
        curves = _curves.fitted_curves(finished, config.to_dict())
        write_trial(trial, **curves)  # the machine's curves as known before this trial ran
        predicts = self.options.pruning and not is_baseline  # no pruning: every config is measured
        predicted_oom = (
            None
            if not predicts
            else _curves.predicted_out_of_memory(curves.get("memory_fit"), config.to_dict(), budgets.memory_limit_bytes)
        )
        saturated = None if not predicts else _curves.past_the_knee(curves.get("throughput_fit"), config.to_dict())
        if compile_failure is not None:
            return _not_run(
                trial,
                Status.ERROR,
                f"compile mode {config.compile} failed on this workload in trial "
                f"{compile_failure.number} ({TrialRecord.of(compile_failure).reason})",
                crashed=True,
            )
        if crash is not None:
            return _not_run(
                trial,
                Status.ERROR,
                f"this config crashed its process in trial {crash.number} ({TrialRecord.of(crash).reason})",
                crashed=True,
            )
        if proof is not None:
            return _not_run(
                trial,
                Status.OOM,
                f"batch_size {config.batch_size} >= {TrialRecord.of(proof).config['batch_size']}, "
                f"which ran out of memory in trial {proof.number} with the same memory-relevant knobs",
                peak_memory_bytes=TrialRecord.of(proof).peak_memory_bytes,
            )
        if predicted_oom is not None:
            fit, peak = predicted_oom
            why = _predicted_oom_reason(config, fit, peak, budgets.describe_memory_limit())
            return _not_run(trial, Status.OOM, why, peak_memory_bytes=int(peak), predicted=True)
        if saturated is not None:
            why = _saturated_reason(config, saturated, self.plan.unit)
            return _not_run(trial, Status.SLOW, why, predicted=True)
        return None

    def _measured(
        self, trial: optuna.Trial, config: TrainConfig, finished: list[optuna.trial.FrozenTrial], is_baseline: bool
    ) -> TrialOutcome:
        """The config run in a fresh process; a crash, or a compile mode that fails, marked so it never runs again."""
        budgets = self.plan.budgets
        predicts = self.options.pruning and not is_baseline
        # The speed reference (the workload's unit per second): the fastest trial that ran fine,
        # whatever its deadline verdict.
        best = max((_records.rate(t) for t in finished if _records.status(t) == "ok"), default=None)
        outcome = run_trial(
            TrialJob(
                workload=self.options.workload,
                config=config.to_dict(),
                device=self.plan.device.torch_device,
                measure=self.options.measure,
                memory_budget_bytes=budgets.memory_budget_bytes,
                timeout_seconds=self.plan.trial_timeout_seconds,
                rank_against=max(
                    (
                        rate
                        for t in finished
                        if _records.status(t) == "ok" and (rate := TrialRecord.of(t).samples_per_second)
                    ),
                    default=None,
                ),
                noise_seconds=self._noise_seconds(is_baseline),
                step_closure=self.plan.step_closure,
            ),
            on_window=None if is_baseline else self._report_window(trial),
            slow_below=None if not predicts or best is None else self.options.slow_fraction * best,
            deadline=self.deadline,
            on_wait=self.listener.on_note,
        )
        if process_crashed(outcome):
            write_trial(trial, crashed=True)  # the same config would crash the same way: not run again
        if config.compile != "off" and _compile_failed(outcome):
            # Infeasible on this workload: no later trial runs this compile mode.
            write_trial(trial, compile_failed=True, crashed=True)
        return outcome

    def _noise_seconds(self, is_baseline: bool) -> float | None:
        """How long a trial measures the gradient noise scale after its windows: the baseline always (the
        export states it), every trial where the effective batch is free (the ranking uses it), for one
        window's time."""
        if is_baseline:  # the one measurement where the effective batch is kept: three windows' time
            return BASELINE_NOISE_WINDOWS * self.options.measure.window_seconds
        if self.plan.space.effective_batch is None:
            return self.options.measure.window_seconds
        return None

    def _budgets(self, trials: list[Any]) -> Any:
        """The plan's budgets with the gradient noise scale the trials measured so far."""
        return self.plan.budgets.with_noise_scale(trials)

    def _report_window(self, trial: optuna.Trial) -> Callable[[WindowResult], Any]:
        """Each window's figure for Optuna's pruner, in the objective's terms: the full run's steady
        time at the window's rate (the study's dataset size known from an earlier trial), or the
        window's throughput in the workload's unit."""
        config = TrialRecord.of(trial).config or {}
        trials = trial.study.get_trials(deepcopy=False)
        dataset_size = next((size for t in trials if (size := TrialRecord.of(t).dataset_size)), None)
        budgets = self._budgets(trials)

        def report(window: WindowResult) -> tuple[Status, str] | None:
            if self.plan.objective == "time":
                if dataset_size is None:
                    return None
                value = budgets.project({"dataset_size": dataset_size, "config": config}, window.samples_per_second)
            else:
                value = window.units_per_second
            trial.report(value, window.index)
            if trial.should_prune():
                return Status.SLOW, (
                    f"pruned by the study's pruner after window {window.index + 1} "
                    f"at {window.units_per_second:.1f} {self.plan.unit}/s"
                )
            return None

        return report

    def _record(self, trial: optuna.Trial, outcome: TrialOutcome) -> float:
        import optuna

        budgets = self.plan.budgets
        limit = budgets.memory_limit_bytes
        peak = outcome.peak_memory_bytes
        if outcome.status is Status.OK and peak is not None and limit is not None and peak > limit:
            outcome.status = Status.OOM
            outcome.reason = f"peak memory {format_size(peak)} is above {budgets.describe_memory_limit()}"
        write_trial(trial, **outcome.user_attrs())
        if outcome.status is not Status.OK:
            explain_trial(trial, outcome.status.value, outcome.reason)
        if outcome.status is Status.OOM:
            # Positive: infeasible; the sampler learns where the memory limit lies.
            excess = (peak / limit - 1.0) if (peak and limit) else 0.0
            trial.set_constraint("memory", max(excess, 0.01))
        elif peak is not None and limit is not None:
            trial.set_constraint("memory", peak / limit - 1.0)
        if outcome.status is Status.OK:
            projected = self._record_projection(trial, outcome)
            if self.plan.objective == "time":
                return projected if projected is not None else math.inf
            return outcome.record().rate
        if outcome.status is Status.ERROR:
            if TrialRecord.of(trial).crashed:
                # Pruned, not failed: TPE counts pruned trials among the bad ones, so it samples
                # away from a config that crashes, where a failed trial would be ignored.
                raise optuna.TrialPruned(f"error: {outcome.reason}")
            raise TrialError(outcome.reason)
        raise optuna.TrialPruned(f"{outcome.status.value}: {outcome.reason}")

    def _record_projection(self, trial: optuna.Trial, outcome: TrialOutcome) -> float | None:
        """The full run's projected time; past the deadline it is a constraint, not a failure."""
        # The trial's own figures are among its user attributes already: its noise figure counts too.
        budgets = self._budgets(trial.study.get_trials(deepcopy=False))
        projection = budgets.projection(dataclasses.replace(outcome.record(), config=TrialRecord.of(trial).config))
        projected = None if projection is None else projection["seconds"]
        write_trial(trial, projected_full_run_seconds=projected)
        if projection is not None:
            write_trial(trial, projection_includes=projection["includes"])
        if budgets.time_limit_seconds is None or projected is None:
            return projected
        trial.set_constraint("deadline", projected / budgets.time_limit_seconds - 1.0)
        if projected > budgets.time_limit_seconds:
            write_trial(
                trial,
                reason=f"projected full run {format_duration(projected)} misses {budgets.describe_time_limit()}",
            )
        return projected

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.trials_run += 1
        if self.repeated_errors.add(trial.number, _records.status(trial), TrialRecord.of(trial).reason):
            study.stop()  # the workload fails the same way whatever the config
        self.recover(study)  # before the next trial: a search beside this one may have died
        trials = study.get_trials(deepcopy=False)
        self._explain(study, trials)
        self.listener.on_trial_end(trial, _records.best_trial(trials, self.plan.objective))

    def _explain(self, study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> None:
        """The study's note refreshed after this process's first trial and then at most every
        NOTE_EVERY_SECONDS; its figures with it, once FIGURE_EVERY more trials have run."""
        now = time.monotonic()
        if self._noted_at is not None and now - self._noted_at < NOTE_EVERY_SECONDS:
            return
        figures = self.trials_run - self._figures_at >= FIGURE_EVERY
        explain_study(study, figures=figures, trials=trials)
        self._noted_at = now
        if figures:
            self._figures_at = self.trials_run


def _answered_from(trial: optuna.Trial, measured: optuna.trial.FrozenTrial, unit: str) -> float:
    """A config the sampler proposed again: no process runs it. The trial takes the earlier
    measurement's objective value and constraints, so the sampler learns what it would have; its
    status is ``duplicate``, so it is never a candidate of its own (the earlier trial is)."""
    write_trial(
        trial,
        skipped=True,
        duplicate_of=measured.number,
        status=TrialStatus.DUPLICATE,
        reason=f"not run: the same config as trial #{measured.number} ({_records.rate(measured):.1f} {unit}/s); "
        "a sampler may propose a config again",
    )
    for name, value in measured.constraints.items():
        trial.set_constraint(name, value)
    assert measured.value is not None  # a measured trial finished with its objective value
    return measured.value


def _predicted_oom_reason(config: TrainConfig, fit: dict[str, Any], peak: float, limit: str) -> str:
    """Why a config is not run: the memory line fitted to earlier trials puts its peak above the limit."""
    return (
        f"predicted peak {format_size(int(peak))} at batch_size {config.batch_size}, above "
        f"{limit} (memory line fitted to trials "
        f"{', '.join(f'#{n}' for n in fit['trials'])}: {'-' if fit['intercept_bytes'] < 0 else ''}"
        f"{format_size(abs(int(fit['intercept_bytes'])))} + {format_size(int(fit['bytes_per_sample']))} "
        "per sample)"
    )


def _saturated_reason(config: TrainConfig, saturated: dict[str, Any], unit: str) -> str:
    """Why a config is not run: its batch is past the knee of the throughput curve fitted to earlier trials."""
    return (
        f"batch_size {config.batch_size} is past {_curves.PAST_KNEE:g}x the throughput knee "
        f"(batch {saturated['knee_batch']:.0f}, {_curves.SATURATION:.0%} of the fitted ceiling "
        f"{saturated['ceiling_per_second']:.1f} {unit}/s, from trials "
        f"{', '.join(f'#{n}' for n in saturated['trials'])})"
    )


def _not_run(
    trial: optuna.Trial,
    status: Status,
    why: str,
    *,
    peak_memory_bytes: int | None = None,
    crashed: bool = False,
    predicted: bool = False,
) -> TrialOutcome:
    """The outcome of a trial that earlier results (or the curves fitted to them) settle without a
    process: marked skipped, and crashed (never run again) or predicted where that is the reason."""
    write_trial(trial, skipped=True)
    if crashed:
        write_trial(trial, crashed=True)
    if predicted:
        write_trial(trial, predicted=True)
    return TrialOutcome(status=status, reason=f"not run: {why}", peak_memory_bytes=peak_memory_bytes)
