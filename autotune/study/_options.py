"""What a search is asked (SearchOptions), what it will do (SearchPlan), what it gave (SearchResult) and
who hears of it (SearchListener)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from autotune.exceptions import ParameterError
from autotune.knobs._config import TrainConfig
from autotune.knobs._device import DeviceInfo
from autotune.knobs._space import SearchSpace
from autotune.runner import MeasureSettings
from autotune.study._budget import Budgets, check_positive_number
from autotune.study._lr_find import SCALINGS, LRFindResult
from autotune.workload._workload import DEMO_SPEC

if TYPE_CHECKING:
    import optuna


METRIC_NAME = "samples/s"  # the objective's name in a throughput study of a samples workload


TIME_METRIC_NAME = "full run (s)"  # the objective's name when studies rank by the full run's time


ObjectiveKind = Literal["time", "throughput"]


SamplerKind = Literal["guided", "tpe", "random", "grid"]


SAMPLERS = ("guided", "tpe", "random", "grid")


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """Everything ``autotune search`` takes; the CLI fills it from its options."""

    workload: str = DEMO_SPEC
    study_name: str | None = None
    storage: str | None = None
    space: str | Path | Mapping[str, Any] | None = None  # a file, a shipped space's name, or a space document
    n_trials: int | None = 20
    timeout_seconds: float | None = None  # the whole search, the running trial included
    trial_timeout_seconds: float | None = None  # None: derived from timeout_seconds and n_trials
    max_memory_bytes: int | None = None  # None: the device's memory (CUDA) or the available memory (CPU)
    memory_headroom: float = 0.10
    # None: the space file's, else the baseline's when it accumulates (or the workload declares one);
    # "free": any effective batch.
    effective_batch: int | Literal["free"] | None = None
    epochs: float | None = None  # None: the workload's epochs
    steps: int | None = None  # the full run in optimizer steps, instead of epochs
    # "time": rank by the full run's projected wall time (compile and warm-up included);
    # "throughput": by steady throughput in the workload's unit.
    objective: ObjectiveKind = "time"
    deadline_seconds: float | None = None
    safety_margin_seconds: float = 0.0
    slow_fraction: float = 0.5
    lr_find: bool = True  # run the LR range test on the best config after the speed search
    # How max_lr follows a changed effective batch (and the range test's centre): auto, adascale,
    # linear, sqrt or none (autotune.study._lr_find.scaled_lr).
    lr_scaling: str = "auto"
    seed: int | None = None
    device: str = "auto"
    measure: MeasureSettings = MeasureSettings()
    # tpe: Optuna's TPE; random: uniform sampling; grid: every config of the space once (choices only).
    sampler: SamplerKind = "guided"
    # False: every trial measured in full: no median or slow-fraction pruning, no batch skipped on a
    # fitted curve's prediction (a config already proven out of memory or crashing is still not run).
    pruning: bool = True
    # A worker joining a study another search started (autotune worker): the study is never created, its
    # setup is taken as recorded, and the workload may live at another path (its file's hash is checked).
    join: bool = False
    # Device slots (--devices): one worker process per device, each seeing only its own; () runs the
    # trials here, on ``device``.
    devices: tuple[str, ...] = ()
    trials_target: int | None = None  # stop once the study holds this many trials (a slot's process)
    # Each trial (and the full run) as this many data-parallel processes (torch.distributed's launcher,
    # DistributedDataParallel), one per device; batch_size is each one's. 1: a single process.
    nproc_per_trial: int = 1

    def __post_init__(self) -> None:
        """Every value is checked here, before anything is loaded, opened or run."""
        for name in ("n_trials", "effective_batch", "steps", "nproc_per_trial"):
            value = getattr(self, name)
            if name == "effective_batch" and value == "free":
                continue
            if (value is not None or name == "nproc_per_trial") and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ParameterError(f"{name} must be an integer >= 1, got {value!r}", name)
        for name in ("timeout_seconds", "trial_timeout_seconds", "max_memory_bytes", "epochs", "deadline_seconds"):
            if getattr(self, name) is not None:
                check_positive_number(name, getattr(self, name))
        if not 0 <= self.slow_fraction < 1:
            raise ParameterError(f"slow_fraction must be in [0, 1), got {self.slow_fraction}", "slow_fraction")
        if self.objective not in ("time", "throughput"):
            raise ParameterError(f"objective must be time or throughput, got {self.objective!r}", "objective")
        if self.sampler not in SAMPLERS:
            raise ParameterError(f"sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}", "sampler")
        if self.lr_scaling not in SCALINGS:
            raise ParameterError(
                f"lr_scaling must be one of {', '.join(SCALINGS)}, got {self.lr_scaling!r}", "lr_scaling"
            )
        if len(self.devices) > 1 and self.nproc_per_trial > 1:
            raise ParameterError(
                "devices: one slot per device, or nproc_per_trial ranks per trial over the node's devices, not both",
                "devices",
            )
        Budgets(  # the budgets' own checks (headroom, margin against deadline), before anything runs
            memory_headroom=self.memory_headroom,
            deadline_seconds=self.deadline_seconds,
            safety_margin_seconds=self.safety_margin_seconds,
        )


@dataclasses.dataclass(frozen=True)
class SearchPlan:
    """What a search will run, settled before any trial: shown to the user, stored with the study."""

    study_name: str
    storage: str
    device: DeviceInfo
    space: SearchSpace  # restricted to what the device and workload can run
    requested_space: dict[str, Any]  # the space as written, stored to detect a changed space on resume
    baseline: TrainConfig
    budgets: Budgets
    trial_timeout_seconds: float
    notes: list[str]
    objective: ObjectiveKind = "time"
    unit: str = "samples"
    step_closure: bool | None = None  # True: the optimizer steps with a closure the workload did not declare
    # Each knob's values dropped before the search (the device, the workload, the probe, the cores), and why.
    unsupported: dict[str, dict[Any, str]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SearchResult:
    """What a search gave: the study, its best and baseline trials, the range test and the notes."""

    study_name: str
    storage: str
    trials_run: int
    best: optuna.trial.FrozenTrial | None
    baseline: optuna.trial.FrozenTrial | None
    status_counts: dict[str, int]
    lr_find: LRFindResult | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    paired: dict[str, Any] | None = None  # the winner and the baseline re-measured, interleaved
    seconds: float = 0.0  # this search's wall time, the range test and the re-measurement included


class SearchListener:
    """Hooks for showing a search as it runs; the default shows nothing."""

    def on_plan(self, plan: SearchPlan) -> None: ...

    def on_trial_start(self, number: int, config: TrainConfig, is_baseline: bool) -> None: ...

    def on_trial_end(self, trial: optuna.trial.FrozenTrial, best: optuna.trial.FrozenTrial | None) -> None: ...

    def on_lr_find_start(self, trial: optuna.trial.FrozenTrial) -> None: ...

    def on_recipe_check_start(self, trial: optuna.trial.FrozenTrial, max_lr: float, what: str) -> None:
        """Trial ``trial``'s config at ``max_lr`` (``what`` says where it came from) is about to be run
        beside the recipe."""

    def on_workload_check(self, plan: SearchPlan) -> None:
        """The workload's first step at the baseline is about to run (a new study only)."""

    def on_slot_line(self, slot: str, line: str) -> None:
        """A line a device slot's process printed."""

    def on_note(self, message: str) -> None:
        """Something the user should know while the search runs (it waits for the device, it
        recovered a dead search's trials)."""


def metric_name(objective: str, unit: str) -> str:
    """The objective's name, as optuna-dashboard shows it."""
    return TIME_METRIC_NAME if objective == "time" else f"{unit}/s"
