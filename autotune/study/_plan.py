"""Planning a search before it starts: the space fitted to the device, the workload and the machine, the
recipe's effective batch, the budgets and the trial timeout."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Literal

from autotune.exceptions import SearchSpaceError
from autotune.knobs._config import TrainConfig
from autotune.knobs._device import DeviceInfo, detect_device, unsupported_values
from autotune.knobs._space import SearchSpace, load_space
from autotune.store._storage import DEFAULT_STORAGE
from autotune.study._budget import Budgets, derive_trial_timeout
from autotune.workload._workload import Workload, load_workload, workload_name

if TYPE_CHECKING:
    pass
from autotune.study._options import SearchOptions, SearchPlan


def plan_search(options: SearchOptions, workload: Workload | None = None) -> SearchPlan:
    """Load the workload and the space, restrict the space to the device: every input error is raised here."""
    workload = workload or load_workload(options.workload)
    space = load_space(options.space if options.space is not None else workload.space)
    recipe_batch = recipe_effective_batch(workload, space)
    space, notes = _held_batch_space(options, workload, space, recipe_batch)
    device = detect_device(options.device)
    notes += check_data_parallel(options.nproc_per_trial, device, space)
    requested = space.baseline(workload.baseline_overrides())
    if options.nproc_per_trial > 1:
        requested = dataclasses.replace(requested, world_size=options.nproc_per_trial)
    unsupported = _unsupported(workload, space, device, requested)
    restricted, dropped = space.restrict(unsupported)
    notes += dropped
    baseline = _runnable(requested, unsupported, notes)
    if options.sampler == "grid":
        grid = restricted.grid_points(baseline)  # a space with ranges is refused here, before anything runs
        notes.append(f"exhaustive grid: {len(grid)} configs")
    budgets = _budgets(options, workload, device, recipe_batch)
    trial_timeout = options.trial_timeout_seconds or derive_trial_timeout(options.timeout_seconds, options.n_trials)
    return SearchPlan(
        study_name=options.study_name or workload_name(options.workload),
        storage=options.storage or DEFAULT_STORAGE,
        device=device,
        space=restricted,
        requested_space=space.describe(),
        baseline=baseline,
        budgets=budgets,
        trial_timeout_seconds=trial_timeout,
        notes=notes,
        objective=options.objective,
        unit=workload.unit,
        unsupported=unsupported,
    )


def _held_batch_space(
    options: SearchOptions, workload: Workload, space: SearchSpace, recipe_batch: int
) -> tuple[SearchSpace, list[str]]:
    """The space with the effective batch every trial keeps (or none, where it is free), and the notes
    saying which and why."""
    held, notes = _effective_batch(options, workload, space, recipe_batch)
    ranks = options.nproc_per_trial
    if isinstance(held, int) and ranks > 1:
        if held % ranks:
            raise SearchSpaceError(
                f"effective batch {held} cannot be shared by --nproc-per-trial {ranks} ranks "
                f"(not a multiple of {ranks}); choose --effective-batch as a multiple of it"
            )
        notes.append(f"{ranks} data-parallel ranks: {held // ranks} samples per rank and optimizer step")
        held //= ranks  # what each rank's batch_size x accumulation_steps must make
    if held is not None and not space.knobs["batch_size"].is_searched:
        # A batch the space does not search stays the baseline's; accumulation follows the held batch.
        space = space.pinned("batch_size", _recipe(workload, space).batch_size)
    try:
        space, fixed = (
            space.with_effective_batch(held)
            if held is not None
            else (dataclasses.replace(space, effective_batch=None), [])
        )  # free: any, whatever the file said
    except SearchSpaceError as exc:
        if ranks > 1 and held is not None and options.effective_batch is None:
            # The recipe's batch shared by the ranks leaves each less than the space's smallest batch_size:
            # the share's divisors are what a data-parallel run of that recipe can take.
            batch = dataclasses.replace(space.knobs["batch_size"], from_baseline=True)
            space, fixed = dataclasses.replace(space, knobs={**space.knobs, "batch_size": batch}).with_effective_batch(
                held
            )
            notes.append(
                f"the recipe's effective batch {recipe_batch} over {ranks} ranks leaves {held} samples per rank, "
                "below the space's batch_size range: batch_size from the divisors of it"
            )
            return space, notes + fixed
        if held != recipe_batch or options.effective_batch is not None:
            raise
        raise SearchSpaceError(
            f"{exc}, the recipe's, which every trial keeps (--effective-batch free releases it)"
        ) from None
    notes += fixed
    return space, notes


def check_data_parallel(ranks: int, device: DeviceInfo, space: SearchSpace) -> list[str]:
    """Refuse, in one line, data-parallel trials this machine or this search cannot run; the notes on
    how the ranks are placed. ``space`` is the one the search runs (its effective batch held or free)."""
    if ranks <= 1:
        return []
    import torch.distributed as dist

    if not dist.is_available():
        raise SearchSpaceError(f"--nproc-per-trial {ranks}: this torch build has no torch.distributed")
    if space.effective_batch is None:
        raise SearchSpaceError(
            f"--nproc-per-trial {ranks} with a free effective batch: ranking a changed batch needs the gradient "
            "noise scale, which data-parallel trials do not measure (hold one with --effective-batch N)"
        )
    if device.is_cuda:
        import torch

        gpus = torch.cuda.device_count()
        if gpus < ranks:
            return [
                f"{ranks} data-parallel ranks on {gpus} GPU(s): ranks share GPUs (cuda:<local_rank mod {gpus}>) "
                "and reduce through gloo (NCCL refuses two ranks on one GPU)"
            ]
        return [f"{ranks} data-parallel ranks, one per GPU (cuda:0..{ranks - 1}), nccl"]
    return [f"{ranks} data-parallel ranks on the CPU, gloo, {_usable_cores() // ranks or 1} threads each"]


def _unsupported(
    workload: Workload, space: SearchSpace, device: DeviceInfo, baseline: TrainConfig
) -> dict[str, dict[object, str]]:
    """Each knob's values this run cannot take, or that cannot gain on this device, and why: the
    device's, the workload's, a closure's (no fp16), the precisions the device's probe finds slower
    than fp32 (never the baseline's own: it is the user's run) and the machine's cores' (DataLoader
    workers)."""
    unsupported = {name: dict(values) for name, values in unsupported_values(device).items()}
    from autotune.training._apply import slow_precisions, unsupported_by_workload  # torch: not at import

    for name, values in unsupported_by_workload(workload, device.torch_device).items():
        unsupported.setdefault(name, {}).update(values)
    if workload.step_closure:
        unsupported.setdefault("precision", {})["fp16"] = (
            "the optimizer steps with a closure, which GradScaler cannot scale"
        )
    probed = [
        p
        for p in _choices(space, "precision")
        if p not in unsupported.get("precision", {})
        and p != baseline.precision
        and space.knobs["precision"].is_searched
    ]
    for value, reason in slow_precisions(device.torch_device, probed).items():
        unsupported.setdefault("precision", {})[value] = reason
    cores = _usable_cores()
    too_many = [w for w in _choices(space, "num_workers") if isinstance(w, int) and w > cores]
    if too_many:
        unsupported["num_workers"] = {w: f"more DataLoader workers than this machine's {cores} cores" for w in too_many}
    return unsupported


def _budgets(options: SearchOptions, workload: Workload, device: DeviceInfo, recipe_batch: int) -> Budgets:
    """The search's budgets: the memory and time limits, the full run's length and its evaluations."""
    epochs = float(options.epochs if options.epochs is not None else workload.epochs)
    return Budgets(
        # The host's memory is shared by a CPU group's ranks: each rank's budget is its share.
        memory_budget_bytes=options.max_memory_bytes
        or (device.total_memory_bytes // (1 if device.is_cuda else options.nproc_per_trial)),
        memory_headroom=options.memory_headroom,
        epochs=epochs,
        deadline_seconds=options.deadline_seconds,
        safety_margin_seconds=options.safety_margin_seconds,
        steps=options.steps,
        # autotune train evaluates every evaluate_every epochs: as many times in the full run.
        evaluations=float(max(1, math.floor(epochs / workload.evaluate_every))) if workload.evaluate else 0.0,
        baseline_effective_batch=recipe_batch,
    )


def recipe_effective_batch(workload: Workload, space: SearchSpace) -> int:
    """The recipe's samples per optimizer step: Workload.effective_batch, else the baseline's
    batch_size x accumulation_steps as the space file completes it (its defaults, its effective batch)."""
    if workload.effective_batch is not None:
        return workload.effective_batch
    return _recipe(workload, space).effective_batch_size


def _recipe(workload: Workload, space: SearchSpace) -> TrainConfig:
    """The user's current run as the space file completes it, before any restriction."""
    return space.baseline(workload.baseline_overrides())


def _effective_batch(
    options: SearchOptions, workload: Workload, space: SearchSpace, recipe_batch: int
) -> tuple[int | Literal["free"] | None, list[str]]:
    """The effective batch every trial keeps, and a note saying why: --effective-batch N, the space
    file's, else the recipe's own; None (--effective-batch free, or the file's "free"): any, each ranked
    by the time to the recipe's progress."""
    if options.effective_batch == "free" or options.effective_batch is None and space.effective_batch == "free":
        source = (
            "--effective-batch free" if options.effective_batch == "free" else f"{space.source}: effective_batch free"
        )
        return None, [
            f"{source}: trials may change the recipe's {recipe_batch} samples per optimizer "
            "step; one that does is ranked by the time to the recipe's progress (gradient noise scale) and "
            "exported only once a run to that progress is checked against the recipe's"
        ]
    for held, source in ((options.effective_batch, "--effective-batch"), (space.effective_batch, space.source)):
        if held is not None:
            changes = (
                []
                if held == recipe_batch
                else [
                    f"{source}: effective batch {held}, not the recipe's {recipe_batch}: every trial is projected "
                    "to the "
                    "recipe's progress (gradient noise scale), and max_lr follows the batch"
                ]
            )
            return held, changes
    return recipe_batch, [
        f"the recipe's effective batch {recipe_batch} is kept in every trial (--effective-batch free releases it)"
    ]


def with_closure(options: SearchOptions, note: str | None) -> SearchPlan:
    """The plan again for a workload whose optimizer's step needs a closure it did not declare."""
    workload = dataclasses.replace(load_workload(options.workload), step_closure=True)
    plan = plan_search(options, workload)
    return dataclasses.replace(plan, step_closure=True, notes=plan.notes + ([note] if note else []))


def cap_batch(plan: SearchPlan, dataset_size: int | None) -> SearchPlan:
    """The batch range follows the dataset: no batch_size above what one epoch of it can fill. Not where
    the search varies the dataset itself (a dataset.* knob), whose size may then differ per trial."""
    space = plan.space
    if not dataset_size or any(name.startswith("dataset.") for name in space.searched):
        return plan
    accumulation = 1
    if space.effective_batch is None and not space.knobs["accumulation_steps"].is_searched:
        accumulation = plan.baseline.accumulation_steps
    capped, notes = space.cap_batch(dataset_size, accumulation)
    return dataclasses.replace(plan, space=capped, notes=plan.notes + notes) if notes else plan


def _usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, where the platform has one)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _choices(space: SearchSpace, name: str) -> tuple[Any, ...]:
    return space.knobs[name].choices or ()


def _runnable(requested: TrainConfig, unsupported: dict, notes: list[str]) -> TrainConfig:
    """The baseline with any knob value the device cannot run replaced by the field default."""
    values = requested.to_dict()
    for name, reasons in unsupported.items():
        for value, reason in reasons.items():
            if values[name] == value and type(values[name]) is type(value):
                default = TrainConfig.__dataclass_fields__[name].default
                values[name] = default
                notes.append(f"baseline {name}={value} runs as {default}: {reason}")
    return TrainConfig.from_dict(values, source="baseline").normalized()
