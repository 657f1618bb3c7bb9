"""autotune's records, written and read only here: a trial's (its Optuna user attributes), the study's
setup, and the export document. Each carries a schema version; a record without one was written
before versions were kept (version 0, the same keys) and reads the same way.

A trial's record stays flat, one user attribute per figure, so optuna-dashboard lists each one.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from autotune.exceptions import UsageError
from autotune.knobs._table import MEMORY_NEUTRAL_KNOBS

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial, Trial

SCHEMA_KEY = "schema"  # each record's version, under this key
TRIAL_SCHEMA = 1
SETUP_SCHEMA = 1
EXPORT_SCHEMA = 1


class TrialStatus(str, enum.Enum):
    """How a trial ended. Everything but ``ok`` is a loss with a recorded reason."""

    OK = "ok"
    OOM = "oom"
    SLOW = "slow"
    DIVERGED = "diverged"
    TIMEOUT = "timeout"
    ERROR = "error"
    INTERRUPTED = "interrupted"  # its search process died or was stopped while it ran
    DUPLICATE = "duplicate"  # a config measured before: answered from that trial, not run


@dataclasses.dataclass(frozen=True)
class TrialRecord:
    """One trial's figures, as stored in its user attributes (None: not recorded)."""

    schema: int = 0
    status: TrialStatus | None = None
    reason: str = ""
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    memory_budget_bytes: int | None = None
    samples_per_second: float | None = None  # median over windows
    unit_per_second: float | None = None  # the same in the workload's unit
    unit: str | None = None
    throughput_cv: float | None = None
    window_samples_per_second: list[float] = dataclasses.field(default_factory=list)
    peak_memory_bytes: int | None = None
    data_wait_fraction: float | None = None
    warmup_seconds: float | None = None
    compile_seconds: float | None = None
    loss_start: float | None = None
    loss_end: float | None = None
    loss_decrease: float | None = None
    scaler_skipped_steps: int | None = None
    dataset_size: int | None = None
    cycle_momentum: bool | None = None
    adaptive_optimizer: bool | None = None
    evaluation_seconds: float | None = None
    device: str | None = None
    device_kind: str | None = None  # "cuda (NVIDIA H200)": trials of different kinds are never ranked together
    devices: list[str] | None = None  # the devices it ran on, as this machine names them (a --devices slot)
    torch_version: str | None = None
    noise: dict[str, Any] | None = None  # the gradient noise scale's measurement
    noise_scale: float | None = None
    noise_scale_stderr: float | None = None
    wall_seconds: float | None = None
    startup_seconds: float | None = None
    overhead_seconds: float | None = None
    overhead_fraction: float | None = None
    log_tail: str | None = None
    projected_full_run_seconds: float | None = None
    projection_includes: list[str] | None = None
    memory_fit: dict[str, Any] | None = None  # the curves known before it ran
    throughput_fit: dict[str, Any] | None = None
    skipped: bool = False  # not run: answered from earlier trials
    crashed: bool = False
    compile_failed: bool = False
    predicted: bool = False  # skipped on a fitted curve's prediction
    duplicate_of: int | None = None
    from_study: str | None = None  # enqueued from an earlier study of the same workload and device
    host: str | None = None
    pid: int | None = None
    baseline: bool = False  # the user's current config, measured first
    interruptions: int = 0  # times a search process died while running it (retried)
    retry_of: int | None = None  # the interrupted trial whose config it runs again

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> TrialRecord:
        """The record in ``attrs`` (a trial's user attributes); keys it does not know are left out."""
        values = {key: attrs[key] for key in TRIAL_KEYS if key in attrs and attrs[key] is not None}
        if "status" in values:
            try:
                values["status"] = TrialStatus(values["status"])
            except ValueError:
                values.pop("status")
        return cls(**values)

    @classmethod
    def of(cls, trial: FrozenTrial | Trial | Mapping[str, Any]) -> TrialRecord:
        """The record of a trial (finished or running), or of its user attributes."""
        return cls.from_attrs(trial if isinstance(trial, Mapping) else trial.user_attrs)

    def to_attrs(self, keys: Iterable[str] | None = None) -> dict[str, Any]:
        """The user attributes to store, with the schema version: ``keys`` (None values included: the
        dashboard lists a figure a trial could not measure), else every field set away from its default."""
        if keys is None:
            attrs = {key: getattr(self, key) for key in TRIAL_KEYS if key != "schema"}
            attrs = {key: value for key, value in attrs.items() if value is not None and value != TRIAL_DEFAULTS[key]}
        else:
            attrs = {key: getattr(self, key) for key in keys}
        if self.status is not None and "status" in attrs:
            attrs["status"] = self.status.value
        return {SCHEMA_KEY: TRIAL_SCHEMA, **attrs}

    @property
    def rate(self) -> float:
        """Throughput in the workload's unit per second (samples/s for a record without a unit)."""
        return float(self.unit_per_second or self.samples_per_second or 0.0)

    @property
    def effective_batch(self) -> int:
        """Samples per optimizer step: batch_size x accumulation_steps x the data-parallel ranks."""
        config = self.config
        return int(config.get("batch_size", 1)) * int(config.get("accumulation_steps", 1)) * self.world_size

    @property
    def world_size(self) -> int:
        """The trial's data-parallel processes (its config's world_size; 1: a single process)."""
        return int(self.config.get("world_size") or 1)


def as_record(trial: TrialRecord | FrozenTrial | Mapping[str, Any]) -> TrialRecord:
    """The record of a trial, of its user attributes, or the record itself."""
    return trial if isinstance(trial, TrialRecord) else TrialRecord.of(trial)


TRIAL_KEYS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(TrialRecord))
TRIAL_DEFAULTS: dict[str, Any] = {key: getattr(TrialRecord(), key) for key in TRIAL_KEYS}


def write_trial(trial: Any, **figures: Any) -> None:
    """Record figures on a running trial (an optuna.Trial): each key must be a TrialRecord field."""
    unknown = [key for key in figures if key not in TRIAL_KEYS]
    if unknown:
        raise KeyError(f"not a trial record field: {unknown[0]!r}")
    if SCHEMA_KEY not in trial.user_attrs:
        trial.set_user_attr(SCHEMA_KEY, TRIAL_SCHEMA)
    for key, value in figures.items():
        trial.set_user_attr(key, value.value if isinstance(value, TrialStatus) else value)


def status(trial: FrozenTrial) -> str:
    return trial.user_attrs.get("status", "running" if trial.state.name == "RUNNING" else trial.state.name.lower())


def is_feasible(trial: FrozenTrial) -> bool:
    """Finished, status ok, and within every constraint (Optuna's rule: all values <= 0)."""
    return (
        trial.state.name == "COMPLETE"
        and trial.user_attrs.get("status") == "ok"
        and all(value <= 0 for value in trial.constraints.values())
    )


def rate(trial: TrialRecord | FrozenTrial | Mapping[str, Any]) -> float:
    """A trial's throughput in the workload's unit per second (tokens/s, images/s, samples/s):
    ``unit_per_second``, or samples/s for a trial recorded without it."""
    return as_record(trial).rate


def unit(trial: TrialRecord | FrozenTrial | Mapping[str, Any]) -> str:
    """The workload's unit a trial counted ("samples" when it counted none)."""
    return as_record(trial).unit or "samples"


throughput = rate  # what trials are ranked by when their run's length is not known


def best_trial(
    trials: Iterable[FrozenTrial], objective: str, budgets: Any = None, effective_batch: int | None = None
) -> FrozenTrial | None:
    """The feasible trial the objective ranks first: the shortest projected full run ("time"),
    or the highest throughput in the workload's unit ("throughput"). A trial that ran the
    baseline's own config is a second measurement of the baseline, not a candidate. ``budgets``
    projects each trial again (with the study's latest noise scale) instead of taking the figure
    recorded when it ran; ``effective_batch``: among the trials of that effective batch only."""
    trials = list(trials)
    baseline = baseline_trial(trials)
    feasible = [
        t
        for t in feasible_trials(trials)
        if baseline is None or not runs_baseline_config(t.user_attrs, baseline.user_attrs)
    ]
    if effective_batch is not None:
        feasible = [t for t in feasible if effective_batch_of(t) == effective_batch]
    if not feasible:
        return None
    if objective == "time":

        def projected(t: FrozenTrial) -> float | None:
            if budgets is not None:
                return budgets.project(t.user_attrs)
            return t.user_attrs.get("projected_full_run_seconds")

        timed = [(seconds, t) for t in feasible if (seconds := projected(t)) is not None]
        if timed:
            return min(timed, key=lambda pair: pair[0])[1]
    return max(feasible, key=rate)


def effective_batch_of(trial: TrialRecord | FrozenTrial | Mapping[str, Any]) -> int:
    """A trial's samples per optimizer step (batch_size x accumulation_steps)."""
    return as_record(trial).effective_batch


def runs_baseline_config(attrs: Mapping[str, Any], baseline_attrs: Mapping[str, Any]) -> bool:
    """Whether a trial (its user attributes) that is not the baseline ran the baseline's own config,
    as a sampler may propose it again: its figure measures the baseline, never a speedup."""
    config = attrs.get("config")
    return not attrs.get("baseline") and config is not None and config == baseline_attrs.get("config")


def feasible_trials(trials: Iterable[FrozenTrial]) -> list[FrozenTrial]:
    return [trial for trial in trials if is_feasible(trial)]


def baseline_trial(trials: Iterable[FrozenTrial]) -> FrozenTrial | None:
    """The baseline's measurement: the first baseline trial that finished ok (a re-run after a
    crash counts), else the first one that finished at all."""
    baselines = sorted(
        (t for t in trials if t.user_attrs.get("baseline") and t.state.is_finished()), key=lambda t: t.number
    )
    return next((t for t in baselines if t.user_attrs.get("status") == "ok"), baselines[0] if baselines else None)


def proven_out_of_memory(
    trials: Iterable[FrozenTrial], config: dict[str, Any], budget_bytes: int | None
) -> FrozenTrial | None:
    """An earlier trial that ran out of memory with the same memory-relevant knobs and a batch
    size no larger than ``config``'s, under a budget no larger than this one: ``config`` cannot fit."""
    for trial in trials:
        earlier = trial.user_attrs.get("config")
        if trial.user_attrs.get("status") != "oom" or not earlier or trial.user_attrs.get("skipped"):
            continue
        same_knobs = all(
            earlier.get(name) == value for name, value in config.items() if name not in MEMORY_NEUTRAL_KNOBS
        )
        earlier_budget = trial.user_attrs.get("memory_budget_bytes")
        budget_ok = earlier_budget is None or (budget_bytes is not None and budget_bytes <= earlier_budget)
        if same_knobs and budget_ok and config["batch_size"] >= earlier["batch_size"]:
            return trial
    return None


def measured_before(trials: Iterable[FrozenTrial], config: dict[str, Any]) -> FrozenTrial | None:
    """An earlier trial that ran exactly ``config`` and finished ok: a sampler proposing it again
    (TPE and random sampling may) is answered from that measurement, not run a second time."""
    for trial in trials:
        attrs = trial.user_attrs
        if (
            trial.state.name == "COMPLETE"
            and attrs.get("status") == "ok"
            and not attrs.get("skipped")
            and attrs.get("config") == config
        ):
            return trial
    return None


def crashed_before(trials: Iterable[FrozenTrial], config: dict[str, Any]) -> FrozenTrial | None:
    """An earlier trial whose process crashed (a segfault, an abort) with exactly ``config``."""
    for trial in trials:
        attrs = trial.user_attrs
        if attrs.get("crashed") and not attrs.get("skipped") and attrs.get("config") == config:
            return trial
    return None


def failed_compile(trials: Iterable[FrozenTrial], mode: str) -> FrozenTrial | None:
    """An earlier trial in which torch.compile in ``mode`` failed on this workload."""
    if mode == "off":
        return None
    for trial in trials:
        attrs = trial.user_attrs
        if (
            attrs.get("compile_failed")
            and not attrs.get("skipped")
            and (attrs.get("config") or {}).get("compile") == mode
        ):
            return trial
    return None


def status_counts(trials: Iterable[FrozenTrial]) -> dict[str, int]:
    """How many trials ended each way (ok, oom, slow, ...), in order of first appearance."""
    counts: dict[str, int] = {}
    for trial in trials:
        counts[status(trial)] = counts.get(status(trial), 0) + 1
    return counts


@dataclasses.dataclass(frozen=True)
class StudySetup:
    """What a study was set up with. Stored one study user attribute per part (optuna-dashboard shows
    each, and truncates long values, so one big attribute would not be readable there), with the
    schema version under ``setup_schema``. ``workload`` is written last: it marks the setup complete."""

    workload: str = ""  # "": no complete setup recorded yet
    space: dict[str, Any] = dataclasses.field(default_factory=dict)  # the space as requested, described
    baseline: dict[str, Any] = dataclasses.field(default_factory=dict)  # the baseline's TrainConfig
    device: str = ""  # described ("cpu (x86_64, 2 cores)")
    torch_device: str = "cpu"
    budgets: dict[str, Any] | None = None  # Budgets.to_json()
    requested: dict[str, Any] | None = None  # what the user asked for (the memory budget as given)
    measure: dict[str, Any] = dataclasses.field(default_factory=dict)  # MeasureSettings
    trial_timeout_seconds: float = 600.0
    objective: str = "throughput"  # studies before the objective was recorded ranked by throughput
    step_closure: bool | None = None
    lr_scaling: str = "auto"
    # What a worker joining the study checks itself against: the workload file's hash, torch's version,
    # the device kind (autotune.study._worker.identity).
    identity: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The options a worker joining the study searches with (autotune.study._worker.JOINED_OPTIONS).
    search: dict[str, Any] = dataclasses.field(default_factory=dict)
    trials_target: int | None = None  # the study's trials, all its searches' asked for: workers stop there
    schema: int = 0

    @property
    def complete(self) -> bool:
        return bool(self.workload)

    @property
    def searched_knobs(self) -> list[str]:
        """The knobs the recorded space searches (a list of choices or a range)."""
        return [name for name, domain in self.space.items() if isinstance(domain, (list, dict))]

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any]) -> StudySetup:
        """The setup recorded in a study's user attributes (an empty one while none is complete)."""
        if "workload" not in attrs:
            return cls()
        values = {key: attrs[key] for key in SETUP_KEYS if key in attrs and attrs[key] is not None}
        return cls(**values, schema=int(attrs.get(SETUP_SCHEMA_KEY, 0)))

    def to_attrs(self, keys: Iterable[str] | None = None) -> dict[str, Any]:
        """The study user attributes to write (all parts, or ``keys``), "workload" last."""
        chosen = SETUP_KEYS if keys is None else tuple(keys)
        attrs = {SETUP_SCHEMA_KEY: SETUP_SCHEMA, **{key: getattr(self, key) for key in chosen if key != "workload"}}
        if "workload" in chosen:
            attrs["workload"] = self.workload
        return attrs


SETUP_SCHEMA_KEY = "setup_schema"
SETUP_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(StudySetup) if f.name != "schema")


def as_setup(setup: StudySetup | Mapping[str, Any]) -> StudySetup:
    """A setup, or one from a mapping of its parts."""
    return setup if isinstance(setup, StudySetup) else StudySetup.from_attrs(setup)


def searched_knobs(setup: StudySetup | Mapping[str, Any]) -> list[str]:
    """The knobs a study's recorded space searches (a list of choices or a range)."""
    return as_setup(setup).searched_knobs


def read_setup(study: Any) -> StudySetup:
    """The recorded setup (``complete`` False while none is).

    Each part is its own write, and another process may be recording a setup right now:
    ``write_setup`` writes "workload" last, so a study without it has no complete setup yet.
    """
    return StudySetup.from_attrs(study.user_attrs)


def write_setup(study: Any, setup: StudySetup, keys: Iterable[str] | None = None) -> None:
    """Record the setup's parts (or ``keys``), "workload" last (it marks the setup complete)."""
    for key, value in setup.to_attrs(keys).items():
        study.set_user_attr(key, value)


@dataclasses.dataclass(frozen=True)
class ExportDocument:
    """What export-best writes: the config and, by section, its measured figures, the OneCycle schedule,
    the LR range test, the progress a changed effective batch is charged, the full run, the payoff, the
    choice and its provenance. ``autotune train`` reads it back; an export without ``schema`` was
    written before versions were kept and reads the same way."""

    config: dict[str, Any]
    measured: dict[str, Any] = dataclasses.field(default_factory=dict)
    one_cycle: dict[str, Any] = dataclasses.field(default_factory=dict)
    lr_find: dict[str, Any] | None = None
    progress: dict[str, Any] | None = None
    full_run: dict[str, Any] = dataclasses.field(default_factory=dict)
    payoff: dict[str, Any] = dataclasses.field(default_factory=dict)
    selection: dict[str, Any] = dataclasses.field(default_factory=dict)
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    schema: int = EXPORT_SCHEMA

    def to_dict(self) -> dict[str, Any]:
        """The document as written: ``schema`` first, then the sections in order."""
        values = dataclasses.asdict(self)
        return {SCHEMA_KEY: values.pop("schema"), **values}

    @classmethod
    def from_dict(cls, document: Mapping[str, Any], *, source: str = "export") -> ExportDocument:
        """An export's sections (a config file with only ``config:`` reads as an export without the rest).
        A section that is not a mapping reads as absent; a schema newer than this autotune's is refused."""
        schema = document.get(SCHEMA_KEY, 0)
        if not isinstance(schema, int) or schema > EXPORT_SCHEMA:
            raise ValueError(
                f"{source}: export schema {schema!r} is newer than this autotune reads ({EXPORT_SCHEMA}); "
                "upgrade autotune"
            )
        config = document.get("config")
        if not isinstance(config, Mapping):
            raise ValueError(f"{source}: no config: mapping")
        sections = {
            name: dict(document[name])
            for name in EXPORT_SECTIONS
            if name != "config" and isinstance(document.get(name), Mapping)
        }
        return cls(config=dict(config), schema=schema, **sections)


EXPORT_SECTIONS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(ExportDocument) if f.name != "schema")


def device_kind_of(trial: Any, default: str | None) -> str:
    """The device kind a trial was measured on: its own, else ``default`` (the study's), else "unrecorded"."""
    return as_record(trial).device_kind or default or "unrecorded"


def of_one_kind(
    trials: list[FrozenTrial], study_kind: str | None, requested: str | None
) -> tuple[list[FrozenTrial], str, list[str]]:
    """The trials measured on one device kind (``requested``, else the study's own), that kind, and a
    line saying so where the study holds several: figures from two kinds of device never rank together."""
    counts: dict[str, int] = {}
    for trial in trials:
        kind = device_kind_of(trial, study_kind)
        counts[kind] = counts.get(kind, 0) + 1
    if requested is not None and requested not in counts:
        listing = ", ".join(f"{kind!r} ({n} trials)" for kind, n in sorted(counts.items())) or "none"
        raise UsageError(f"--device-kind {requested!r}: no trial of the study ran on it (kinds: {listing})")
    default = study_kind if study_kind in counts else max(counts, key=lambda k: counts[k], default="unrecorded")
    kind = requested or default
    others = ", ".join(f"{other} ({n} trials)" for other, n in sorted(counts.items()) if other != kind)
    if not others:
        return trials, kind, []
    line = f"ranked among the trials on {kind} only; the study also holds {others} (--device-kind picks another)"
    return [t for t in trials if device_kind_of(t, study_kind) == kind], kind, [line]
