"""The record of a full run: what it measured against what the search projected, written as JSON
and, when the config came from a study, stored with that study beside the trial's projection."""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any, Literal

from autotune.exceptions import AutotuneError

RunStatus = Literal["finished", "interrupted"]
StopKind = Literal["epochs", "steps", "time"]

# Optuna refuses to change a finished trial's user attributes (UpdateFinishedTrialError), so a run's
# actual figures are a study user attribute named after the trial: "full_run_actual.<trial number>".
ACTUAL_KEY_PREFIX = "full_run_actual."


@dataclasses.dataclass
class RunCounters:
    """What a run has done so far, summed over its starts (a resumed run carries them on)."""

    steps: int = 0  # optimizer steps
    samples: int = 0
    units: float = 0.0  # in the workload's unit
    seconds: float = (
        0.0  # wall time of the training loop: first step to last, checkpoint saves and evaluations included
    )
    setup_seconds: float = 0.0  # building the model, dataset, DataLoader and optimizer, each start
    warmup_seconds: float = 0.0  # each start's first steps (worker start, compile), as a trial's warm-up
    checkpoint_seconds: float = 0.0  # saving checkpoints inside the loop
    evaluation_seconds: float = 0.0  # the workload's evaluate, inside the loop
    data_wait_seconds: float = 0.0  # waiting for the DataLoader
    steady_samples: int = 0  # after each start's warm-up steps, checkpoint saves left out
    steady_units: float = 0.0
    steady_seconds: float = 0.0
    passes: int = 0  # passes over the dataset the DataLoader completed (counted as the next one begins)
    starts: int = 0  # 1 + resumes
    evaluations: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # {step, epoch, metrics}
    # The training loss as the run went: {step, seconds (training wall time), loss (mean since the last point)}.
    curve: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunCounters:
        return cls(**{**data, "evaluations": list(data.get("evaluations", [])), "curve": list(data.get("curve", []))})


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """A full run's figures; every rate in samples/s unless it says unit (the workload's unit)."""

    status: RunStatus
    signal: str | None  # SIGINT or SIGTERM when interrupted
    workload: str
    device: str
    config: dict[str, Any]
    stop: StopKind  # what decided the run's length
    steps: int  # optimizer steps run, over every start
    target_steps: int | None  # the run's length in steps (None: --time)
    time_limit_seconds: float | None  # --time
    schedule_steps: int  # the OneCycle schedule's length
    epochs: float  # passes over the dataset the steps make (micro-batches / micro-batches per pass)
    samples: int
    unit: str
    effective_batch_size: int
    dataset_size: int
    seconds: float  # training wall time over every start (see RunCounters.seconds)
    setup_seconds: float
    warmup_seconds: float
    checkpoint_seconds: float
    evaluation_seconds: float
    data_wait_fraction: float | None
    resumes: int
    samples_per_second: float | None  # steady state: each start's warm-up steps excluded, as a trial's windows
    unit_per_second: float | None
    overall_samples_per_second: float | None  # every sample over the whole wall time
    overall_unit_per_second: float | None
    measured_samples_per_second: float | None  # the export's measured: figure
    measured_unit_per_second: float | None
    throughput_ratio: float | None  # steady samples/s over measured
    projected_seconds: float | None  # the export's projection for the steps run: steps x batch / rate + warm-up
    time_ratio: float | None  # seconds over projected_seconds
    full_run_steps: int | None  # the export's full run (its epochs) in optimizer steps
    full_run_projected_seconds: float | None  # the export's full_run: projected_seconds
    full_run_estimate_seconds: float | None  # the actual time if this was that run, else its projection x time_ratio
    deadline_seconds: float | None
    safety_margin_seconds: float | None
    fits_deadline: bool | None  # full_run_estimate_seconds within the deadline less the margin
    final_loss: float | None  # mean of the last steps' losses
    evaluations: list[dict[str, Any]]  # the workload's evaluate: {step, epoch, metrics}, every evaluate_every epochs
    checkpoint: str | None
    record_path: str | None
    study: str | None
    trial: int | None
    started_at: str
    finished_at: str
    curve: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # RunCounters.curve
    # The run's length against the recipe's progress (train --same-progress): the samples factor applied.
    samples_factor: float | None = None

    @property
    def exit_code(self) -> int:
        """0 when finished; 128 + the signal's number when a signal stopped it (130, 143)."""
        return {"SIGINT": 130, "SIGTERM": 143}.get(self.signal or "", 0)

    @property
    def is_full_run(self) -> bool:
        return self.full_run_steps is not None and self.status == "finished" and self.steps == self.full_run_steps

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    def actual(self) -> dict[str, Any]:
        """The figures stored with the study for ``autotune report`` and the dashboard."""
        return {
            "trial": self.trial,
            "seconds": self.seconds,
            "projected_seconds": self.projected_seconds,
            "time_ratio": self.time_ratio,
            "samples_per_second": self.samples_per_second,
            "measured_samples_per_second": self.measured_samples_per_second,
            "throughput_ratio": self.throughput_ratio,
            "unit_per_second": self.unit_per_second,
            "measured_unit_per_second": self.measured_unit_per_second,
            "unit": self.unit,
            "steps": self.steps,
            "epochs": self.epochs,
            "full_run": self.is_full_run,
            "full_run_projected_seconds": self.full_run_projected_seconds,
            "full_run_estimate_seconds": self.full_run_estimate_seconds,
            "fits_deadline": self.fits_deadline,
            "final_loss": self.final_loss,
            "evaluation": self.evaluations[-1]["metrics"] if self.evaluations else None,
            "device": self.device,
            "finished_at": self.finished_at,
        }


def project_seconds(steps: int, effective_batch_size: int, measured: dict[str, Any]) -> float | None:
    """Budgets.project for ``steps`` optimizer steps: their samples over the measured rate, plus the
    trial's warm-up and compile time, paid once."""
    rate = measured.get("samples_per_second")
    if not rate:
        return None
    return steps * effective_batch_size / rate + (measured.get("warmup_seconds") or 0.0)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def record_on_study(record: RunRecord, storage: str) -> str:
    """Store the record's figures with the study the config came from; a line saying where. Raises
    AutotuneError (the storage or study cannot be opened) for the caller to report as a warning."""
    import sqlalchemy.exc

    from autotune.store._storage import load_study, redact

    assert record.study is not None and record.trial is not None
    _check_sqlite_file(storage)
    try:
        study = load_study(record.study, storage)
        study.set_user_attr(f"{ACTUAL_KEY_PREFIX}{record.trial}", record.actual())
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise AutotuneError(f"storage {redact(storage)}: {' '.join(str(exc).split())[:200]}") from None
    return f"recorded on trial #{record.trial} of study {record.study} ({redact(storage)})"


def actuals(study: Any) -> dict[int, dict[str, Any]]:
    """The full runs recorded with a study, by trial number (the latest run of each)."""
    found = {}
    for key, value in study.user_attrs.items():
        number = key[len(ACTUAL_KEY_PREFIX) :]
        if key.startswith(ACTUAL_KEY_PREFIX) and number.isdigit() and isinstance(value, dict):
            found[int(number)] = value
    return found


def full_run_line(actual: dict[str, Any]) -> str:
    """``autotune report``'s line for a recorded run: projected against actual time and throughput."""
    from autotune.knobs._units import format_duration

    what = "full run" if actual.get("full_run") else f"run of {actual['steps']} steps"
    line = f"{what} of trial #{actual['trial']}: "
    if actual.get("projected_seconds") is not None:
        line += f"projected {format_duration(actual['projected_seconds'])}, "
    line += f"actual {format_duration(actual['seconds'])}"
    if actual.get("time_ratio") is not None:
        line += f" ({actual['time_ratio']:.2f}x)"
    unit, rate, measured = actual.get("unit"), actual.get("unit_per_second"), actual.get("measured_unit_per_second")
    if unit and unit != "samples" and rate is not None and measured:
        line += f"; {rate:.1f} {unit}/s, {rate / measured:.2f}x the measured {measured:.1f}"
    elif actual.get("samples_per_second") is not None:
        line += f"; {actual['samples_per_second']:.1f} samples/s"
        if actual.get("throughput_ratio") is not None:
            line += f", {actual['throughput_ratio']:.2f}x the measured {actual['measured_samples_per_second']:.1f}"
    if not actual.get("full_run") and actual.get("full_run_estimate_seconds") is not None:
        line += f"; full run at this pace {format_duration(actual['full_run_estimate_seconds'])}"
        if actual.get("full_run_projected_seconds") is not None:
            line += f" (projected {format_duration(actual['full_run_projected_seconds'])})"
    return line


def _check_sqlite_file(storage: str) -> None:
    """A SQLite storage that is not there is not created just to record a run in it."""
    import sqlalchemy

    from autotune.exceptions import StorageError
    from autotune.store._storage import redact

    try:
        url = sqlalchemy.engine.make_url(storage)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise StorageError(f"storage {redact(storage)!r}: not a database URL") from None
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        if not Path(url.database).expanduser().is_file():
            raise StorageError(f"storage {redact(storage)}: no such database file {url.database!r}")
