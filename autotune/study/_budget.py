"""Budgets a config must meet: memory with headroom, and the full run's time window."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from autotune.exceptions import ParameterError
from autotune.knobs._units import format_duration, format_size
from autotune.store._records import TrialRecord, as_record
from autotune.training import _noise_scale as _noise

DEFAULT_TRIAL_TIMEOUT_SECONDS = 600.0
MIN_TRIAL_TIMEOUT_SECONDS = 30.0
TRIAL_SHARE_CAP = 0.3  # of the search's --timeout: the most one trial may take


@dataclasses.dataclass(frozen=True)
class Budgets:
    """What makes a measured config feasible, beyond running at all."""

    memory_budget_bytes: int | None = None  # a trial above it is stopped (and on CUDA cannot allocate past it)
    memory_headroom: float = 0.10  # feasible only below (1 - headroom) x budget
    epochs: float = 1.0  # the full run, in passes over the dataset
    deadline_seconds: float | None = None  # the full run's window
    safety_margin_seconds: float = 0.0  # kept free inside the window
    steps: int | None = None  # the full run in optimizer steps, instead of epochs
    evaluations: float = 0.0  # evaluations in the full run (Workload.evaluate every evaluate_every epochs)
    # The recipe's samples per optimizer step: a trial at another effective batch is projected to the
    # recipe's progress, its samples scaled by the gradient noise scale (None: as many samples).
    baseline_effective_batch: int | None = None
    noise_scale: float | None = None  # the study's gradient noise scale in samples, read from its trials

    def __post_init__(self) -> None:
        if not 0 <= self.memory_headroom < 1:
            raise ParameterError(f"memory_headroom must be in [0, 1), got {self.memory_headroom}", "memory_headroom")
        check_positive_number("epochs", self.epochs)
        if self.steps is not None and (
            isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1
        ):
            raise ParameterError(f"steps must be an integer >= 1, got {self.steps!r}", "steps")
        if self.deadline_seconds is not None:
            check_positive_number("deadline_seconds", self.deadline_seconds)
            if self.safety_margin_seconds >= self.deadline_seconds:
                raise ParameterError(
                    f"safety_margin_seconds ({format_duration(self.safety_margin_seconds)}) must be shorter than "
                    f"deadline_seconds ({format_duration(self.deadline_seconds)})",
                    "safety_margin_seconds",
                    "deadline_seconds",
                )

    @property
    def memory_limit_bytes(self) -> int | None:
        """The most a feasible config may use: the budget less the headroom."""
        if self.memory_budget_bytes is None:
            return None
        return int(self.memory_budget_bytes * (1 - self.memory_headroom))

    @property
    def time_limit_seconds(self) -> float | None:
        """The longest feasible full run: the deadline less the safety margin."""
        if self.deadline_seconds is None:
            return None
        return self.deadline_seconds - self.safety_margin_seconds

    def describe_memory_limit(self) -> str:
        return (
            f"{format_size(self.memory_limit_bytes)} (the budget {format_size(self.memory_budget_bytes)} "
            f"less {self.memory_headroom:.0%} headroom)"
        )

    def describe_time_limit(self) -> str:
        margin = f" less the {format_duration(self.safety_margin_seconds)} margin" if self.safety_margin_seconds else ""
        deadline = format_duration(self.deadline_seconds)
        return f"{format_duration(self.time_limit_seconds)} (the deadline {deadline}{margin})"

    def project(
        self, trial_attrs: TrialRecord | Mapping[str, Any], samples_per_second: float | None = None
    ) -> float | None:
        """Seconds the full run would take at a trial's throughput (see ``projection``)."""
        parts = self.projection(trial_attrs, samples_per_second)
        return None if parts is None else parts["seconds"]

    def projection(
        self, trial_attrs: TrialRecord | Mapping[str, Any], samples_per_second: float | None = None
    ) -> dict[str, Any] | None:
        """The full run's wall time at a trial's throughput, and what it is made of: its samples
        (dataset x epochs, or steps x the recipe's effective batch) over the steady rate, plus the
        trial's warm-up (building, worker start, compile), paid once, plus its evaluations, each as
        long as the trial's one evaluation. A trial at another effective batch than the recipe's
        needs more (or fewer) samples to reach the recipe's progress: ``samples_factor`` of them."""
        record = as_record(trial_attrs)
        rate = samples_per_second or record.samples_per_second
        dataset_size = record.dataset_size
        if not rate:
            return None
        effective_batch = record.effective_batch
        recipe_batch = self.baseline_effective_batch or effective_batch
        run = self._run_samples(dataset_size, recipe_batch)
        if run is None:
            return None
        samples, size = run
        factor = _noise.samples_factor(effective_batch, recipe_batch, self.noise_scale)
        samples *= factor
        if factor != 1.0:
            size += self._to_progress(factor, effective_batch, recipe_batch)
        steady = samples / rate
        warmup = float(record.warmup_seconds or 0.0)
        compile_seconds = float(record.compile_seconds or 0.0)
        evaluation = self.evaluations * float(record.evaluation_seconds or 0.0)
        includes = [
            f"{size} at {rate:.1f} samples/s: {format_duration(steady)}",
            f"warm-up {format_duration(warmup)}"
            + (f" (of which compile {format_duration(compile_seconds)})" if compile_seconds else ""),
        ]
        if self.evaluations:
            includes.append(f"{self.evaluations:g} evaluations: {format_duration(evaluation)}")
        return {
            "seconds": steady + warmup + evaluation,
            "steady_seconds": steady,
            "warmup_seconds": warmup,
            "compile_seconds": compile_seconds,
            "evaluation_seconds": evaluation,
            "samples": samples,
            "effective_batch": effective_batch,
            "optimizer_steps": samples / effective_batch,
            "progress_factor": factor,
            "includes": includes,
        }

    def _run_samples(self, dataset_size: int | None, recipe_batch: int) -> tuple[float, str] | None:
        """The full run's samples at the recipe's effective batch, and how they are counted: its steps, else
        the dataset's epochs; None when neither is known."""
        if self.steps is not None:
            return float(self.steps * recipe_batch), f"{self.steps} steps x {recipe_batch} samples"
        if dataset_size:
            return float(dataset_size * self.epochs), f"{self.epochs:g} epochs x {dataset_size} samples"
        return None

    def _to_progress(self, factor: float, effective_batch: int, recipe_batch: int) -> str:
        """What a run at another effective batch than the recipe's multiplies its samples by, and why."""
        noise = (
            f"gradient noise scale {self.noise_scale:.3g}"
            if self.noise_scale
            else "no gradient noise scale measured: as many steps as the recipe"
        )
        return (
            f" x {factor:.3g} to the recipe's progress (effective batch {effective_batch}, not {recipe_batch}; {noise})"
        )

    def with_noise_scale(self, trials: Any) -> Budgets:
        """These budgets with the gradient noise scale pooled over ``trials`` (trials or their user attributes)."""
        pooled = _noise.pooled(trials)
        return dataclasses.replace(self, noise_scale=None if pooled is None else pooled.value)

    def to_json(self) -> dict[str, Any]:
        """What the study records; the noise scale is read from its trials, not stored."""
        values = dataclasses.asdict(self)
        del values["noise_scale"]
        return values

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Budgets:
        return cls(**(data or {}))


def check_positive_number(name: str, value: object) -> None:
    """A finite number above 0 (not a bool, not NaN, not infinity), or a ParameterError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ParameterError(f"{name} must be a finite number > 0, got {value!r}", name)


def derive_trial_timeout(timeout_seconds: float | None, n_trials: int | None) -> float:
    """Without --trial-timeout: a few times a trial's fair share of the search budget, and never more than
    TRIAL_SHARE_CAP of the budget where four trials or more may run (a short budget keeps room for several
    trials measured to the end)."""
    if timeout_seconds is None:
        return DEFAULT_TRIAL_TIMEOUT_SECONDS
    share = timeout_seconds / (n_trials or 4)
    cap = timeout_seconds if n_trials is not None and n_trials < 4 else TRIAL_SHARE_CAP * timeout_seconds
    return min(cap, max(MIN_TRIAL_TIMEOUT_SECONDS, 3 * share))
