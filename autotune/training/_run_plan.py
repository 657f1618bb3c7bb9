"""What a full run is and who hears of it: its plan, its length in optimizer steps (and how a resumed run's
length is checked), its record's first figures, and the listener's events."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from autotune.exceptions import CheckpointError, UsageError
from autotune.knobs._config import TrainConfig
from autotune.knobs._units import parse_duration
from autotune.training._run_record import (
    RunCounters,
    RunRecord,
    StopKind,
    now,
    project_seconds,
    ratio,
)
from autotune.workload._workload import Workload


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """The run settled before anything is built: every input error is raised while making it."""

    options: TrainOptions
    config: TrainConfig
    workload_spec: str
    workload: Workload
    device: str
    measured: dict[str, Any]
    one_cycle: dict[str, Any]
    full_run: dict[str, Any]
    provenance: dict[str, Any]
    epochs: float | None  # the run's epochs when its length is in epochs
    storage: str | None  # where to record the run (None: nowhere)
    resume_from: Path | None
    notes: list[str]
    progress: dict[str, Any] = dataclasses.field(default_factory=dict)  # the export's progress: section


class TrainListener:
    """Hooks for showing a run as it goes; the default shows nothing. The loop reports progress at
    most every ``progress_interval_seconds`` (each report reads the loss: one device sync)."""

    progress_interval_seconds: float = 5.0

    def on_start(self, start: RunStart) -> None: ...

    def on_progress(self, progress: Progress) -> None: ...

    def on_checkpoint(self, path: Path, step: int) -> None: ...  # a periodic save (not the last one)

    def on_evaluation(self, evaluation: dict[str, Any]) -> None: ...  # {step, epoch, metrics}

    def on_note(self, line: str) -> None: ...


@dataclasses.dataclass(frozen=True)
class RunLength:
    """How long the run is, in optimizer steps, for a dataset of a given size."""

    stop: StopKind
    target_steps: int | None  # None: until time_limit_seconds
    time_limit_seconds: float | None
    schedule_steps: int  # the OneCycle schedule
    full_run_steps: int | None  # the export's full run (its epochs), for the deadline
    samples_factor: float | None = None  # --same-progress: the recipe's length scaled by this many samples

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        if self.stop == "time":
            from autotune.knobs._units import format_duration

            return f"{format_duration(self.time_limit_seconds)} ({self.schedule_steps} scheduled steps)"
        return f"{self.target_steps} steps"


def run_length(plan: RunPlan, dataset_size: int) -> RunLength:
    from autotune.training._apply import steps_per_epoch

    config, options = plan.config, plan.options
    per_epoch = steps_per_epoch(dataset_size, config)
    full_epochs = plan.full_run.get("epochs")
    full_run_steps = max(1, int(per_epoch * full_epochs)) if full_epochs else None
    if options.time_seconds is not None:
        rate = plan.measured["samples_per_second"]
        warmup = plan.measured.get("warmup_seconds") or 0.0
        scheduled = max(1, int((options.time_seconds - warmup) * rate / config.effective_batch_size))
        return RunLength("time", None, options.time_seconds, scheduled, full_run_steps)
    if options.steps is not None:
        factor = float(plan.progress.get("samples_factor") or 1.0) if options.same_progress else 1.0
        steps = options.steps
        if factor != 1.0:  # the recipe's steps, at its effective batch, to the same progress at this one
            recipe_batch = int(plan.progress.get("recipe_effective_batch") or config.effective_batch_size)
            steps = max(1, round(options.steps * recipe_batch * factor / config.effective_batch_size))
        return RunLength("steps", steps, None, steps, full_run_steps, samples_factor=factor if factor != 1.0 else None)
    assert plan.epochs is not None
    steps = max(1, int(per_epoch * plan.epochs))  # as export-best's one_cycle.total_steps counts them
    scaled = options.same_progress and options.epochs is not None
    return RunLength(
        "epochs",
        steps,
        None,
        steps,
        full_run_steps,
        samples_factor=float(plan.progress.get("samples_factor") or 1.0) if scaled else None,
    )


def check_resumed_length(path: Path, saved: dict[str, Any], length: RunLength, options: TrainOptions) -> RunLength:
    """A resumed run keeps the length (and so the schedule) it started with: without --epochs,
    --steps or --time it takes the checkpoint's; a different one is refused."""
    saved_length = RunLength(**saved)
    given = options.epochs is not None or options.steps is not None or options.time_seconds is not None
    same = (length.stop, length.target_steps, length.time_limit_seconds, length.schedule_steps) == (
        saved_length.stop,
        saved_length.target_steps,
        saved_length.time_limit_seconds,
        saved_length.schedule_steps,
    )
    if given and not same:
        raise CheckpointError(
            f"{path} belongs to a run of {saved_length.describe()}, not {length.describe()}; --resume continues "
            "a run with the length it started with (leave out --epochs, --steps and --time)"
        )
    return dataclasses.replace(saved_length, full_run_steps=length.full_run_steps)


def make_record(
    plan: RunPlan,
    length: RunLength,
    counters: RunCounters,
    *,
    dataset_size: int,
    micro_batches: int,
    unit: str,
    status: str,
    signal_name: str | None,
    final_loss: float | None,
    checkpoint: Path | None,
    started_at: str,
) -> RunRecord:
    config = plan.config
    return RunRecord(
        status=status,  # type: ignore[arg-type]
        signal=signal_name,
        workload=plan.workload_spec,
        device=plan.device,
        config=config.to_dict(),
        stop=length.stop,
        steps=counters.steps,
        target_steps=length.target_steps,
        time_limit_seconds=length.time_limit_seconds,
        schedule_steps=length.schedule_steps,
        epochs=counters.steps * config.accumulation_steps / micro_batches,
        samples=counters.samples,
        unit=unit,
        effective_batch_size=config.effective_batch_size,
        dataset_size=dataset_size,
        **_time_spent(counters),
        **_throughput(counters, plan.measured),
        **_against_projection(plan, length, counters, status),
        final_loss=final_loss,
        evaluations=counters.evaluations,
        curve=counters.curve,
        samples_factor=length.samples_factor,
        checkpoint=None if checkpoint is None else str(checkpoint),
        record_path=None,
        study=plan.provenance.get("study"),
        trial=plan.provenance.get("trial"),
        started_at=started_at,
        finished_at=now(),
    )


def _time_spent(counters: RunCounters) -> dict[str, Any]:
    """The record's figures on where the run's time went, and how often it was resumed."""
    return {
        "seconds": counters.seconds,
        "setup_seconds": counters.setup_seconds,
        "warmup_seconds": counters.warmup_seconds,
        "checkpoint_seconds": counters.checkpoint_seconds,
        "evaluation_seconds": counters.evaluation_seconds,
        "data_wait_fraction": ratio(counters.data_wait_seconds, counters.seconds),
        "resumes": max(0, counters.starts - 1),
    }


def _throughput(counters: RunCounters, measured: dict[str, Any]) -> dict[str, Any]:
    """The record's rates, steady and overall, against the export's measured ones."""
    steady_rate = ratio(counters.steady_samples, counters.steady_seconds)
    return {
        "samples_per_second": steady_rate,
        "unit_per_second": ratio(counters.steady_units, counters.steady_seconds),
        "overall_samples_per_second": ratio(counters.samples, counters.seconds),
        "overall_unit_per_second": ratio(counters.units, counters.seconds),
        "measured_samples_per_second": measured.get("samples_per_second"),
        "measured_unit_per_second": measured.get("unit_per_second"),
        "throughput_ratio": ratio(steady_rate, measured.get("samples_per_second")),
    }


def _against_projection(plan: RunPlan, length: RunLength, counters: RunCounters, status: str) -> dict[str, Any]:
    """The record's time against the export's projections, and the full run's estimate against the deadline."""
    config, measured, full_run = plan.config, plan.measured, plan.full_run
    projected = project_seconds(counters.steps, config.effective_batch_size, measured)
    time_ratio = ratio(counters.seconds, projected)
    full_projected = full_run.get("projected_seconds")
    if length.full_run_steps is not None and status == "finished" and counters.steps == length.full_run_steps:
        full_estimate: float | None = counters.seconds  # this was the full run the search projected
    else:
        full_estimate = full_projected * time_ratio if full_projected is not None and time_ratio is not None else None
    deadline = full_run.get("deadline_seconds")
    margin = full_run.get("safety_margin_seconds") or 0.0
    return {
        "projected_seconds": projected,
        "time_ratio": time_ratio,
        "full_run_steps": length.full_run_steps,
        "full_run_projected_seconds": full_projected,
        "full_run_estimate_seconds": full_estimate,
        "deadline_seconds": deadline,
        "safety_margin_seconds": margin if deadline is not None else None,
        "fits_deadline": None if deadline is None or full_estimate is None else full_estimate <= deadline - margin,
    }


@dataclasses.dataclass(frozen=True)
class RunStart:
    workload: str
    device: str
    config: TrainConfig
    length: RunLength
    step: int  # where this start begins (a resumed run's checkpoint step, else 0)
    resumed_from: Path | None
    unit: str
    dataset_size: int
    measured_samples_per_second: float | None
    projected_seconds: float | None  # the export's projection for the run's steps
    deadline_seconds: float | None
    safety_margin_seconds: float
    measured_unit_per_second: float | None = None  # the export's measured figure in the workload's unit


@dataclasses.dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int | None  # None: the run stops on time
    elapsed_seconds: float  # training wall time, over every start
    time_limit_seconds: float | None
    epoch: float
    samples_per_second: float | None  # since the previous report
    unit_per_second: float | None  # the same, in the workload's unit
    unit: str
    loss: float | None  # mean of the steps since the previous report
    eta_seconds: float | None
    deadline: Deadline | None


DEFAULT_CHECKPOINT_EVERY_SECONDS = 1800.0


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """Everything ``autotune train`` takes; the CLI fills it from its options."""

    config: str | Path = "best.yaml"  # an export of export-best, or a file with a config: mapping
    workload: str | None = None  # None: the export's provenance.workload, else the built-in demo
    epochs: float | None = None  # at most one of epochs, steps and time_seconds
    steps: int | None = None
    time_seconds: float | None = None
    device: str = "auto"
    seed: int | None = None
    checkpoint_dir: str | Path = "checkpoints"
    checkpoint_every_steps: int | None = None
    checkpoint_every_seconds: float | None = DEFAULT_CHECKPOINT_EVERY_SECONDS
    resume: bool = False
    out: str | Path | None = None  # None: run_record.json in checkpoint_dir
    storage: str | None = None  # None: the export's provenance.storage
    write_back: bool = True  # record the actual figures with the study the config came from
    # --epochs or --steps in the recipe's terms, scaled to the recipe's progress at the config's
    # effective batch (the export's progress: samples_factor).
    same_progress: bool = False
    # Data-parallel processes of the run (torch.distributed's launcher, DDP); None: the config's world_size.
    nproc_per_trial: int | None = None

    def __post_init__(self) -> None:
        given = [
            name
            for name, value in (("--epochs", self.epochs), ("--steps", self.steps), ("--time", self.time_seconds))
            if value is not None
        ]
        if len(given) > 1:
            raise UsageError(f"give one of --epochs, --steps and --time, not {' and '.join(given)}")
        if self.steps is not None and (isinstance(self.steps, bool) or self.steps < 1):
            raise UsageError(f"--steps must be >= 1, got {self.steps}")
        if self.epochs is not None and not self.epochs > 0:
            raise UsageError(f"--epochs must be > 0, got {self.epochs}")
        if self.time_seconds is not None and not self.time_seconds > 0:
            raise UsageError(f"--time must be more than 0 seconds, got {self.time_seconds}")
        if self.same_progress and self.time_seconds is not None:
            raise UsageError("--same-progress scales --epochs or --steps to the recipe's progress, not --time")
        ranks = self.nproc_per_trial
        if ranks is not None and (isinstance(ranks, bool) or not isinstance(ranks, int) or ranks < 1):
            raise UsageError(f"--nproc-per-trial must be an integer >= 1, got {self.nproc_per_trial!r}")
        if self.checkpoint_every_steps is not None and self.checkpoint_every_steps < 1:
            raise UsageError(f"--checkpoint-every must be >= 1 step, got {self.checkpoint_every_steps}")

    @property
    def record_path(self) -> Path:
        return Path(self.out) if self.out is not None else Path(self.checkpoint_dir) / "run_record.json"


def parse_checkpoint_every(text: str) -> tuple[int | None, float | None]:
    """``--checkpoint-every``: a plain number is optimizer steps (``500``), a duration is wall time
    (``5m``); ``off`` saves only at the end and on SIGINT/SIGTERM. Returns (steps, seconds)."""
    text = text.strip()
    if text.lower() in ("off", "none", "never"):
        return None, None
    if text.isdigit():
        if int(text) < 1:
            raise UsageError(f"--checkpoint-every must be >= 1 step, got {text}")
        return int(text), None
    return None, parse_duration(text, what="--checkpoint-every")


@dataclasses.dataclass(frozen=True)
class Deadline:
    """The run against the deadline the search was given (the export's full_run:)."""

    deadline_seconds: float
    limit_seconds: float  # the deadline less the safety margin
    remaining_seconds: float  # the deadline less the time elapsed
    finish_seconds: float | None  # when the export's full run would end at the current pace
    on_track: bool | None  # finish_seconds within limit_seconds
