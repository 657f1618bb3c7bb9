"""What goes into a trial process (TrialJob) and what comes out of it (TrialOutcome)."""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

from autotune.store._records import TRIAL_KEYS, TrialRecord, TrialStatus

Status = TrialStatus  # how a trial ended (the record's enum)


@dataclasses.dataclass(frozen=True)
class MeasureSettings:
    """How long a trial runs: warm-up steps, then timed windows (data loading included)."""

    warmup_steps: int = 1  # torch.compile trials get one more (its first step compiles)
    windows: int = 3
    window_seconds: float = 1.0
    max_window_steps: int = 50
    min_window_steps: int = 1
    seed: int = 0
    divergence_factor: float | None = 4.0  # diverged when the loss rises above this x its first value
    # Measured to the noise: with max_windows above windows, a trial goes on past `windows` while its
    # windows' relative standard error is above target_spread and it cannot yet be ranked against the
    # best rate so far (TrialJob.rank_against), up to max_windows. None: exactly `windows`.
    max_windows: int | None = None
    target_spread: float = 0.02

    def __post_init__(self) -> None:
        from autotune.exceptions import ParameterError

        for name, low in (("warmup_steps", 0), ("windows", 1), ("max_window_steps", 1), ("min_window_steps", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ParameterError(f"{name} must be an integer >= {low}, got {value!r}", name)
        if self.max_windows is not None and (
            isinstance(self.max_windows, bool)
            or not isinstance(self.max_windows, int)
            or self.max_windows < self.windows
        ):
            raise ParameterError(
                f"max_windows must be an integer >= windows ({self.windows}), got {self.max_windows!r}", "max_windows"
            )
        if not 0 < self.target_spread < 1:
            raise ParameterError(f"target_spread must be between 0 and 1, got {self.target_spread!r}", "target_spread")
        if not 0 < self.window_seconds < float("inf"):
            raise ParameterError(f"window_seconds must be > 0, got {self.window_seconds!r}", "window_seconds")
        if self.divergence_factor is not None and not self.divergence_factor > 1:
            raise ParameterError(f"divergence_factor must be > 1, got {self.divergence_factor!r}", "divergence_factor")

    @property
    def max_steps(self) -> int:
        """Optimizer steps a trial can run at most; the trial's OneCycle schedule spans them."""
        return max(1, self.warmup_steps) + 1 + self.most_windows * self.max_window_steps

    @property
    def most_windows(self) -> int:
        return max(self.windows, self.max_windows or 0)

    def enough_windows(self, rates: list[float], rank_against: float | None) -> bool:
        """Whether the windows so far (their samples/s) measure the trial well enough to stop: at
        least ``windows`` of them, and either their relative standard error is within
        ``target_spread``, or two standard errors around their mean exclude ``rank_against`` (the
        trial is clearly faster or slower than the best so far), or ``max_windows`` are done."""
        count = len(rates)
        if count < self.windows:
            return False
        if count >= self.most_windows:
            return True
        mean = statistics.fmean(rates)
        if count < 2 or mean <= 0:
            return False
        spread = statistics.stdev(rates) / count**0.5  # the standard error of the mean
        if spread / mean <= self.target_spread:
            return True
        return rank_against is not None and abs(mean - rank_against) > 2 * spread


@dataclasses.dataclass(frozen=True)
class TrialJob:
    """Everything a fresh trial process needs; it travels as JSON."""

    workload: str
    config: dict[str, Any]
    device: str = "cpu"
    measure: MeasureSettings = MeasureSettings()
    memory_budget_bytes: int | None = None
    timeout_seconds: float = 600.0
    lr_sweep: dict[str, Any] | None = None  # set for an LR range test: min_lr, max_lr, steps[, beta, stop_factor]
    rank_against: float | None = None  # samples/s of the best trial so far: the windows stop once it is told apart
    # Seconds of gradient-noise measurement after the windows (autotune.training._noise_scale.measure); None: none.
    noise_seconds: float | None = None
    # True: the optimizer steps with a closure whatever the workload says (found when its first step
    # failed inside optimizer.step() without one and ran with one); None: as the workload says.
    step_closure: bool | None = None

    @property
    def world_size(self) -> int:
        """Processes of a data-parallel trial (torch.distributed's launcher, DistributedDataParallel), one
        per device, as the config says; its batch_size is each one's. 1: a single process, no group."""
        return int(self.config.get("world_size") or 1)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrialJob:
        return cls(**{**data, "measure": MeasureSettings(**data["measure"])})


@dataclasses.dataclass
class WindowResult:
    """One timed window: optimizer steps whose samples, units and seconds were counted."""

    index: int
    steps: int
    samples: int
    units: float
    seconds: float  # wall time between two device synchronisations
    data_wait_seconds: float  # of which spent waiting for the DataLoader
    loss: float

    @property
    def samples_per_second(self) -> float:
        return self.samples / self.seconds

    @property
    def units_per_second(self) -> float:
        return self.units / self.seconds


@dataclasses.dataclass
class TrialOutcome:
    """A trial's figures and how it ended; stored as the Optuna trial's user attributes."""

    status: Status
    reason: str = ""
    samples_per_second: float | None = None  # median over windows
    unit_per_second: float | None = None  # median over windows, in the workload's unit
    unit: str | None = None  # the workload's unit ("samples", "tokens", "images", ...)
    throughput_cv: float | None = None  # coefficient of variation of samples/s over windows
    peak_memory_bytes: int | None = None
    data_wait_fraction: float | None = None  # share of timed wall time spent waiting for data
    warmup_seconds: float | None = None
    compile_seconds: float | None = None
    loss_start: float | None = None
    loss_end: float | None = None
    scaler_skipped_steps: int | None = None  # fp16: optimizer steps the GradScaler skipped while timed
    dataset_size: int | None = None  # samples in one epoch of the workload's dataset
    cycle_momentum: bool | None = None  # whether OneCycle cycles the workload optimizer's momentum
    adaptive_optimizer: bool | None = None  # the workload's optimizer has Adam's betas
    evaluation_seconds: float | None = None  # one run of Workload.evaluate, when the workload has one
    device: str | None = None
    torch_version: str | None = None
    windows: list[WindowResult] = dataclasses.field(default_factory=list)
    lr_curve: dict[str, Any] | None = None  # an LR range test's lrs, losses, smoothed losses
    # The gradient noise scale measured after the windows (autotune.training._noise_scale.measure's record).
    noise: dict[str, Any] | None = None
    wall_seconds: float | None = None  # the whole trial, process start to end
    startup_seconds: float | None = None  # process start to the trial's first event (imports, workload loading)
    overhead_seconds: float | None = None  # wall time outside the timed windows and the evaluation, compile aside
    overhead_fraction: float | None = None  # overhead_seconds / (wall_seconds - compile_seconds)
    log_tail: str = ""
    in_optimizer_step: bool = False  # an error raised by the optimizer's step (see _checks: a closure it wants)

    def record(self) -> TrialRecord:
        """The trial's record: its figures as the study stores them."""
        figures = {
            key: value
            for key, value in dataclasses.asdict(self).items()
            if key not in ("windows", "log_tail", "lr_curve", "in_optimizer_step")
        }
        figures["status"] = self.status
        if self.loss_start is not None and self.loss_end is not None:
            figures["loss_decrease"] = self.loss_start - self.loss_end  # with the trial's max_lr, over its steps
        figures["window_samples_per_second"] = [round(w.samples_per_second, 3) for w in self.windows]
        if self.noise is not None:  # the figure on its own, as optuna-dashboard lists it
            figures["noise_scale"] = self.noise.get("value")
            figures["noise_scale_stderr"] = self.noise.get("stderr")
        if self.log_tail and self.status is not Status.OK:
            figures["log_tail"] = self.log_tail[-2000:]
        return TrialRecord(**figures)

    def user_attrs(self) -> dict[str, Any]:
        """The record as the trial's user attributes: every figure a trial measures, None where it could not."""
        record = self.record()
        optional = ("loss_decrease", "noise_scale", "noise_scale_stderr", "log_tail")  # where there is one
        keys = [key for key in OUTCOME_KEYS if key not in optional]
        keys += [key for key in optional if getattr(record, key) is not None]
        return record.to_attrs(["status", *(key for key in keys if key != "status")])


# The figures a trial process reports (the record's fields a TrialOutcome has, and the windows' rates).
OUTCOME_KEYS: tuple[str, ...] = (
    *(field.name for field in dataclasses.fields(TrialOutcome) if field.name in TRIAL_KEYS),
    "window_samples_per_second",
)
