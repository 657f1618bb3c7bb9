"""Workers: search processes that join a running study from any machine (``autotune worker``).

A worker never creates a study. It reads the workload, the space, the budgets and the way of
measuring from the study's setup record, checks that it measures the same thing (the workload
file's hash, torch's version, the device kind), and then runs the study's trials beside the other
processes sharing it, until the study has the trials its searches asked for, or until its own
``--trials`` or ``--timeout``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.exceptions import StudyError, WorkloadError
from autotune.runner import MeasureSettings
from autotune.store import _records
from autotune.store._records import StudySetup
from autotune.store._storage import load_study, redact
from autotune.workload._workload import MOVED_SPECS

if TYPE_CHECKING:
    import optuna

    from autotune.knobs._device import DeviceInfo
    from autotune.study._options import SearchOptions, SearchPlan

# The options of the search that started a study that every process joining it searches with.
JOINED_OPTIONS = (
    "effective_batch",
    "epochs",
    "steps",
    "objective",
    "deadline_seconds",
    "safety_margin_seconds",
    "slow_fraction",
    "lr_find",
    "lr_scaling",
    "seed",
    "sampler",
    "pruning",
    "max_memory_bytes",
    "memory_headroom",
    "trial_timeout_seconds",
    "nproc_per_trial",
)

# What must be the same for two processes' trials to be ranked together, and how it is named.
IDENTITY_PARTS = {"workload_hash": "workload file", "torch": "torch version", "device_kind": "device kind"}


def device_kind(device: DeviceInfo) -> str:
    """The kind of a device, without its index: trials on two cards of one model rank together."""
    return f"{device.type} ({device.name})"


def workload_file(spec: str) -> Path | None:
    """The file a workload spec loads (``file.py:attr``, or a module's source), or None where it has none."""
    spec = MOVED_SPECS.get(spec, spec)
    module_part = spec.rpartition(":")[0]
    if module_part.endswith(".py"):
        return Path(module_part).expanduser().resolve()
    try:
        found = importlib.util.find_spec(module_part)
    except (ImportError, ValueError):
        return None
    return Path(found.origin) if found is not None and found.origin else None


def workload_hash(spec: str) -> str | None:
    """The SHA-256 of the workload's file (its first 16 hex digits), or None where it cannot be read."""
    path = workload_file(spec)
    try:
        return None if path is None else hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def identity(spec: str, device: DeviceInfo) -> dict[str, Any]:
    """What a study records of the process that started it, and what a joining worker must match."""
    import torch

    return {"workload_hash": workload_hash(spec), "torch": torch.__version__, "device_kind": device_kind(device)}


def check_identity(study_name: str, recorded: dict[str, Any], mine: dict[str, Any], *, allow_mixed: bool) -> list[str]:
    """The parts of ``mine`` that differ from the study's record: a one-line StudyError naming them,
    or with ``allow_mixed`` a note each. A study recorded before identities were kept checks nothing."""
    differ = [
        f"its {what} is {recorded[key]!r}, this worker's {mine.get(key)!r}"
        for key, what in IDENTITY_PARTS.items()
        if recorded.get(key) is not None and recorded.get(key) != mine.get(key)
    ]
    if differ and not allow_mixed:
        raise StudyError(f"study {study_name!r}: {'; '.join(differ)} (--allow-mixed joins anyway)")
    return [f"joined with --allow-mixed: {part}" for part in differ]


def joined_options(options: SearchOptions, plan: SearchPlan) -> dict[str, Any]:
    """The part of a search's options that the processes joining its study take."""
    values = {name: getattr(options, name) for name in JOINED_OPTIONS}
    values["trial_timeout_seconds"] = plan.trial_timeout_seconds
    values["device"] = options.device
    return values


def trials_target(study: optuna.Study, options: SearchOptions, recorded: int | None) -> int | None:
    """The trials a study has once this search's are run: those it holds now plus ``--trials``
    (never below an earlier search's target); None where no search gave a number."""
    if options.n_trials is None:
        return recorded
    target = len(study.get_trials(deepcopy=False)) + options.n_trials
    return max(target, recorded or 0)


@dataclasses.dataclass(frozen=True)
class Joined:
    """A worker's options for the study it joins, the trials it may still run there, and its notes."""

    options: SearchOptions
    notes: list[str]
    target: int | None


def join_options(
    study_name: str | None,
    storage: str | None,
    *,
    workload: str | None = None,
    n_trials: int | None = None,
    timeout_seconds: float | None = None,
    device: str | None = None,
    devices: tuple[str, ...] = (),
    allow_mixed: bool = False,
) -> Joined:
    """The options a worker searches ``study_name`` with, read from its setup record and checked
    against this process; every problem (no such study, no setup yet, another workload file,
    torch or device) is a one-line error before anything runs."""
    from autotune.knobs._device import detect_device
    from autotune.study._options import SearchOptions

    study = load_study(study_name, storage)  # without a name, the storage's only study
    study_name = study.study_name
    setup = _records.read_setup(study)
    if not setup.complete:
        raise StudyError(
            f"study {study_name!r} in {redact(storage or '')} has no recorded setup yet: "
            "start it with 'autotune search', then join it"
        )
    if not setup.search:
        raise StudyError(
            f"study {study_name!r} was started before workers could join studies; "
            "continue it with 'autotune search --study' and its options"
        )
    spec = workload or setup.workload
    found = workload_file(spec)
    if workload is None and (found is None or not found.is_file()):
        raise WorkloadError(
            f"study {study_name!r} tunes {setup.workload!r}, which is not at that path here: "
            "give its file with --workload"
        )
    values = dict(setup.search)
    recorded_device = values.pop("device", "auto")
    chosen_device = device or recorded_device  # the study's, unless this worker names one
    mine = identity(spec, detect_device(chosen_device))
    notes = check_identity(study_name, setup.identity, mine, allow_mixed=allow_mixed)
    options = SearchOptions(
        workload=spec,
        study_name=study_name,
        storage=storage,
        space=recorded_space(setup),
        n_trials=n_trials,
        timeout_seconds=timeout_seconds,
        device=chosen_device,
        devices=devices,
        measure=MeasureSettings(**setup.measure),
        join=True,
        **values,
    )
    return Joined(options, notes, setup.trials_target)


def recorded_space(setup: StudySetup) -> dict[str, Any]:
    """The study's space document, as ``load_space`` reads a file, from its recorded description (a
    planned space without an effective batch is a free one: a held batch is always written)."""
    described = dict(setup.space)
    return {"effective_batch": described.pop("effective_batch", "free"), "knobs": described}
