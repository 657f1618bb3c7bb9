"""``autotune train``: the full run of an exported config, through autotune.training._apply (what the trials
ran), with checkpoints, resume, and a record of its figures against what the search projected.

The run's length is ``--epochs``, ``--steps`` (optimizer steps) or ``--time``; by default the
export's full-run epochs, else the workload's. The OneCycle schedule spans the run's optimizer
steps; with ``--time`` it spans the steps the time allows at the measured rate
((time - warm-up) x samples/s / effective batch), so a run at the measured pace ends its schedule
as its time runs out (a faster run finishes the schedule early and goes on at its final LR).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from autotune.exceptions import AutotuneError, CheckpointError, UsageError
from autotune.knobs._config import TrainConfig
from autotune.store._records import ExportDocument
from autotune.training import _checkpoint as checkpoints
from autotune.training import _group, _train_loop
from autotune.training._run_plan import RunPlan, TrainListener, TrainOptions
from autotune.training._run_record import (
    RunRecord,
    record_on_study,
)
from autotune.workload._workload import DEMO_SPEC, Workload, load_workload


def plan_run(options: TrainOptions) -> RunPlan:
    """Read the config file and its export sections, load the workload, pick the device, check the
    checkpoint folder: every error a user can fix is raised here, before anything is built."""
    from autotune.knobs._device import detect_device

    config = TrainConfig.load(options.config)
    if options.nproc_per_trial is not None and options.nproc_per_trial != config.world_size:
        config = dataclasses.replace(config, world_size=options.nproc_per_trial)
    document = _read_document(Path(options.config), config)
    provenance, measured, progress = document.provenance, document.measured, document.progress or {}
    notes: list[str] = []
    _check_sections(options, progress, measured)
    spec = options.workload or provenance.get("workload") or DEMO_SPEC
    workload = _load_workload(spec, provenance, notes)
    device = detect_device(options.device).torch_device
    if config.world_size > 1:
        from autotune.training._distributed import rank_device

        device = str(rank_device(device))  # this rank's: cuda:<local_rank>, or the CPU
    _note_device(provenance, device, notes)
    epochs = None
    if options.steps is None and options.time_seconds is None:
        epochs = float(options.epochs or document.full_run.get("epochs") or workload.epochs)
    storage = _storage_for_record(options, provenance)
    latest = _latest_checkpoint(options, notes)
    epochs = _same_progress(options, config, epochs, float(progress.get("samples_factor") or 1.0), notes)
    return RunPlan(
        options=options,
        config=config,
        workload_spec=spec,
        workload=workload,
        device=device,
        measured=measured,
        one_cycle=document.one_cycle,
        full_run=document.full_run,
        provenance=provenance,
        epochs=epochs,
        storage=storage,
        resume_from=latest if options.resume else None,
        notes=notes,
        progress=progress,
    )


def _check_sections(options: TrainOptions, progress: dict[str, Any], measured: dict[str, Any]) -> None:
    """Refuse --same-progress and --time where the export lacks the section they need."""
    if options.same_progress and not progress.get("samples_factor"):
        raise UsageError(
            f"--same-progress needs the export's progress: section, and {options.config} has none "
            "(write it with autotune export-best)"
        )
    if options.time_seconds is not None and not measured.get("samples_per_second"):
        raise UsageError(
            f"--time sizes the OneCycle schedule from the measured throughput, and {options.config} has no "
            "measured: section (write it with autotune export-best); give --steps or --epochs instead"
        )


def _load_workload(spec: str, provenance: dict[str, Any], notes: list[str]) -> Workload:
    """The workload, stepping with a closure where the search found it must (noted in ``notes``)."""
    workload = load_workload(spec)
    if provenance.get("step_closure") and not workload.step_closure:
        workload = dataclasses.replace(workload, step_closure=True)
        notes.append("the optimizer steps with a closure, as the search found it must (Workload.step_closure)")
    return workload


def _note_device(provenance: dict[str, Any], device: str, notes: list[str]) -> None:
    """Note in ``notes`` a run on another kind of device than the one the config was measured on."""
    measured_on = str(provenance.get("device") or "").split(" ")[0]
    if measured_on and measured_on.split(":")[0] != device.split(":")[0]:
        notes.append(
            f"the config was measured on {measured_on}, this run is on {device}: its figures compare across devices"
        )


def _latest_checkpoint(options: TrainOptions, notes: list[str]) -> Path | None:
    """The checkpoint folder's latest checkpoint; one that a run without --resume would overwrite is refused."""
    folder = Path(options.checkpoint_dir)
    latest = checkpoints.latest_checkpoint(folder)
    if options.resume and latest is None:
        notes.append(f"no checkpoint in {folder} to resume from: starting at step 0")
    if not options.resume and latest is not None:
        raise CheckpointError(
            f"{folder} already holds a run's checkpoints ({latest.name}); continue it with --resume, "
            "or give another --checkpoint-dir"
        )
    return latest


def _same_progress(
    options: TrainOptions, config: TrainConfig, epochs: float | None, factor: float, notes: list[str]
) -> float | None:
    """The run's epochs, scaled to the recipe's progress by --same-progress where that changes them (noted)."""
    if options.same_progress and (options.epochs is None and options.steps is None or factor == 1.0):
        notes.append(
            "--same-progress changes nothing: "
            + (
                "the config keeps the recipe's effective batch"
                if factor == 1.0
                else "the export's epochs already reach the recipe's progress"
            )
        )
    elif options.same_progress and epochs is not None:
        epochs *= factor
        notes.append(
            f"--same-progress: {options.epochs:g} of the recipe's epochs are {epochs:g} at effective batch "
            f"{config.effective_batch_size} ({factor:.3g}x the samples to the recipe's progress)"
        )
    return epochs


def train(options: TrainOptions, listener: TrainListener | None = None) -> RunRecord:
    """Run (or resume) the full run. SIGINT and SIGTERM stop it between steps with a checkpoint:
    the record then says ``interrupted`` and its exit_code is 130 or 143."""

    listener = listener or TrainListener()
    ranks = options.nproc_per_trial or TrainConfig.load(options.config).world_size
    if ranks > 1 and not _group.in_group():
        return _group.run_group(options, ranks, listener)
    plan = plan_run(options)
    for note in plan.notes:
        listener.on_note(note)
    record = _train_loop.run(plan, listener)
    record = dataclasses.replace(record, record_path=str(options.record_path))
    if not _group.leads():  # rank 0 writes the record and records it with the study
        return record
    record.write(options.record_path)  # first: a study that is slow to answer cannot cost the record
    if record.status == "finished" and plan.storage is not None and record.trial is not None:
        try:
            listener.on_note(record_on_study(record, plan.storage))
        except AutotuneError as exc:  # the run is done: a study out of reach is only a warning
            listener.on_note(f"warning: the run could not be recorded with study {record.study}: {exc}")
    return record


def _read_document(path: Path, config: TrainConfig) -> ExportDocument:
    """The whole file (TrainConfig.load has already read and checked it) as an export: a bare config file
    reads as one with no other section."""
    import json

    import yaml

    text = path.read_text()
    document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(document, dict) or not isinstance(document.get("config"), dict):
        return ExportDocument(config=config.to_dict(), schema=0)
    try:
        return ExportDocument.from_dict(document, source=str(path))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


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
