"""``autotune train``: the full run of an exported config, through autotune.training (what the trials
ran), with checkpoints, resume, and a record of its figures against what the search projected.

The run's length is ``--epochs``, ``--steps`` (optimizer steps) or ``--time``; by default the
export's full-run epochs, else the workload's. The OneCycle schedule spans the run's optimizer
steps; with ``--time`` it spans the steps the time allows at the measured rate
((time - warm-up) x samples/s / effective batch), so a run at the measured pace ends its schedule
as its time runs out (a faster run finishes the schedule early and goes on at its final LR).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune import checkpoint as checkpoints
from autotune._units import parse_duration
from autotune.config import TrainConfig
from autotune.exceptions import AutotuneError, CheckpointError, UsageError
from autotune.run_record import (
    RunCounters,
    RunRecord,
    StopKind,
    now,
    project_seconds,
    ratio,
    record_on_study,
)
from autotune.workload import DEMO_SPEC, Workload, load_workload

if TYPE_CHECKING:
    from autotune._train_loop import Progress, RunStart

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

    def __post_init__(self) -> None:
        given = [name for name, value in (("--epochs", self.epochs), ("--steps", self.steps),
                                          ("--time", self.time_seconds)) if value is not None]
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


def plan_run(options: TrainOptions) -> RunPlan:
    """Read the config file and its export sections, load the workload, pick the device, check the
    checkpoint folder: every error a user can fix is raised here, before anything is built."""
    from autotune.device import detect_device

    config = TrainConfig.load(options.config)
    document = _read_document(Path(options.config))
    section = {name: document.get(name) if isinstance(document.get(name), dict) else {}
               for name in ("measured", "one_cycle", "full_run", "provenance", "progress")}
    provenance, measured = section["provenance"], section["measured"]
    notes: list[str] = []
    if options.same_progress and not section["progress"].get("samples_factor"):
        raise UsageError(f"--same-progress needs the export's progress: section, and {options.config} has none "
                         "(write it with autotune export-best)")
    if options.time_seconds is not None and not measured.get("samples_per_second"):
        raise UsageError(
            f"--time sizes the OneCycle schedule from the measured throughput, and {options.config} has no "
            "measured: section (write it with autotune export-best); give --steps or --epochs instead"
        )
    spec = options.workload or provenance.get("workload") or DEMO_SPEC
    workload = load_workload(spec)
    if provenance.get("step_closure") and not workload.step_closure:
        workload = dataclasses.replace(workload, step_closure=True)
        notes.append("the optimizer steps with a closure, as the search found it must (Workload.step_closure)")
    device = detect_device(options.device).torch_device
    measured_on = str(provenance.get("device") or "").split(" ")[0]
    if measured_on and measured_on.split(":")[0] != device.split(":")[0]:
        notes.append(f"the config was measured on {measured_on}, this run is on {device}: its figures compare across devices")
    epochs = None
    if options.steps is None and options.time_seconds is None:
        epochs = float(options.epochs or section["full_run"].get("epochs") or workload.epochs)
    storage = _storage_for_record(options, provenance)
    folder = Path(options.checkpoint_dir)
    latest = checkpoints.latest_checkpoint(folder)
    if options.resume and latest is None:
        notes.append(f"no checkpoint in {folder} to resume from: starting at step 0")
    if not options.resume and latest is not None:
        raise CheckpointError(
            f"{folder} already holds a run's checkpoints ({latest.name}); continue it with --resume, "
            "or give another --checkpoint-dir"
        )
    factor = float(section["progress"].get("samples_factor") or 1.0)
    if options.same_progress and (options.epochs is None and options.steps is None or factor == 1.0):
        notes.append("--same-progress changes nothing: " + (
            "the config keeps the recipe's effective batch" if factor == 1.0
            else "the export's epochs already reach the recipe's progress"))
    elif options.same_progress and epochs is not None:
        epochs *= factor
        notes.append(f"--same-progress: {options.epochs:g} of the recipe's epochs are {epochs:g} at effective batch "
                     f"{config.effective_batch_size} ({factor:.3g}x the samples to the recipe's progress)")
    return RunPlan(options=options, config=config, workload_spec=spec, workload=workload, device=device,
                   measured=measured, one_cycle=section["one_cycle"], full_run=section["full_run"],
                   provenance=provenance, epochs=epochs, storage=storage,
                   resume_from=latest if options.resume else None, notes=notes, progress=section["progress"])


def train(options: TrainOptions, listener: TrainListener | None = None) -> RunRecord:
    """Run (or resume) the full run. SIGINT and SIGTERM stop it between steps with a checkpoint:
    the record then says ``interrupted`` and its exit_code is 130 or 143."""
    from autotune import _train_loop

    listener = listener or TrainListener()
    plan = plan_run(options)
    for note in plan.notes:
        listener.on_note(note)
    record = _train_loop.run(plan, listener)
    record = dataclasses.replace(record, record_path=str(options.record_path))
    record.write(options.record_path)  # first: a study that is slow to answer cannot cost the record
    if record.status == "finished" and plan.storage is not None and record.trial is not None:
        try:
            listener.on_note(record_on_study(record, plan.storage))
        except AutotuneError as exc:  # the run is done: a study out of reach is only a warning
            listener.on_note(f"warning: the run could not be recorded with study {record.study}: {exc}")
    return record


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
            from autotune._units import format_duration

            return f"{format_duration(self.time_limit_seconds)} ({self.schedule_steps} scheduled steps)"
        return f"{self.target_steps} steps"


def run_length(plan: RunPlan, dataset_size: int) -> RunLength:
    from autotune.training import steps_per_epoch

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
    return RunLength("epochs", steps, None, steps, full_run_steps,
                     samples_factor=float(plan.progress.get("samples_factor") or 1.0) if scaled else None)


def check_resumed_length(path: Path, saved: dict[str, Any], length: RunLength, options: TrainOptions) -> RunLength:
    """A resumed run keeps the length (and so the schedule) it started with: without --epochs,
    --steps or --time it takes the checkpoint's; a different one is refused."""
    saved_length = RunLength(**saved)
    given = options.epochs is not None or options.steps is not None or options.time_seconds is not None
    same = (length.stop, length.target_steps, length.time_limit_seconds, length.schedule_steps) == (
        saved_length.stop, saved_length.target_steps, saved_length.time_limit_seconds, saved_length.schedule_steps)
    if given and not same:
        raise CheckpointError(
            f"{path} belongs to a run of {saved_length.describe()}, not {length.describe()}; --resume continues "
            "a run with the length it started with (leave out --epochs, --steps and --time)"
        )
    return dataclasses.replace(saved_length, full_run_steps=length.full_run_steps)


def make_record(plan: RunPlan, length: RunLength, counters: RunCounters, *, dataset_size: int, micro_batches: int,
                unit: str, status: str, signal_name: str | None, final_loss: float | None,
                checkpoint: Path | None, started_at: str) -> RunRecord:
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
    steady_rate = ratio(counters.steady_samples, counters.steady_seconds)
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
        seconds=counters.seconds,
        setup_seconds=counters.setup_seconds,
        warmup_seconds=counters.warmup_seconds,
        checkpoint_seconds=counters.checkpoint_seconds,
        evaluation_seconds=counters.evaluation_seconds,
        data_wait_fraction=ratio(counters.data_wait_seconds, counters.seconds),
        resumes=max(0, counters.starts - 1),
        samples_per_second=steady_rate,
        unit_per_second=ratio(counters.steady_units, counters.steady_seconds),
        overall_samples_per_second=ratio(counters.samples, counters.seconds),
        overall_unit_per_second=ratio(counters.units, counters.seconds),
        measured_samples_per_second=measured.get("samples_per_second"),
        measured_unit_per_second=measured.get("unit_per_second"),
        throughput_ratio=ratio(steady_rate, measured.get("samples_per_second")),
        projected_seconds=projected,
        time_ratio=time_ratio,
        full_run_steps=length.full_run_steps,
        full_run_projected_seconds=full_projected,
        full_run_estimate_seconds=full_estimate,
        deadline_seconds=deadline,
        safety_margin_seconds=margin if deadline is not None else None,
        fits_deadline=None if deadline is None or full_estimate is None else full_estimate <= deadline - margin,
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


def _read_document(path: Path) -> dict[str, Any]:
    """The whole file (TrainConfig.load has already read and checked it): its sections, or {}."""
    import json

    import yaml

    text = path.read_text()
    document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    return document if isinstance(document, dict) and isinstance(document.get("config"), dict) else {}


def _storage_for_record(options: TrainOptions, provenance: dict[str, Any]) -> str | None:
    """Where the run is recorded: --storage, else the export's storage (its password, if any, is
    hidden there: such a storage needs --storage)."""
    if not options.write_back or provenance.get("study") is None or provenance.get("trial") is None:
        return None
    if options.storage:
        return options.storage
    stored = provenance.get("storage")
    if not stored:
        return None
    if "***" in stored:
        raise UsageError(
            f"{options.config} came from study {provenance['study']!r} in {stored}, whose password the export "
            "hides: give --storage with it to record the run there, or --no-write-back"
        )
    return stored
