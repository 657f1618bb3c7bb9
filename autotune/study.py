"""The search: an Optuna study whose trials are measured training runs in fresh processes."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from autotune import _records
from autotune._checks import check_workload
from autotune._recovery import Heartbeat, SearchProcess, process_alive, recover_interrupted, sigterm_as_interrupt
from autotune.budget import Budgets, check_positive_number, derive_trial_timeout
from autotune.config import TrainConfig
from autotune.device import DeviceInfo, detect_device, unsupported_values
from autotune.exceptions import ParameterError, SearchSpaceError, StudyError
from autotune._objective import Objective, TrialError
from autotune.explain import explain_study
from autotune.lr_find import SCALINGS, LRFindError, LRFindResult, lr_find_for_trial, stored_result
from autotune.runner import MeasureSettings
from autotune.runner._scratch import sweep_stale_scratch
from autotune.space import SearchSpace, diff_spaces, load_space
from autotune.storage import DEFAULT_STORAGE, open_storage, redact, storage_exists, study_lock
from autotune.workload import DEMO_SPEC, Workload, load_workload, workload_name

if TYPE_CHECKING:
    import optuna

METRIC_NAME = "samples/s"  # the objective's name in a throughput study of a samples workload
TIME_METRIC_NAME = "full run (s)"  # the objective's name when studies rank by the full run's time
ObjectiveKind = Literal["time", "throughput"]
SamplerKind = Literal["tpe", "random", "grid"]
SAMPLERS = ("tpe", "random", "grid")


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """Everything ``autotune search`` takes; the CLI fills it from its options."""

    workload: str = DEMO_SPEC
    study_name: str | None = None
    storage: str | None = None
    space: str | Path | None = None
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
    # linear, sqrt or none (autotune.lr_find.scaled_lr).
    lr_scaling: str = "auto"
    seed: int | None = None
    device: str = "auto"
    measure: MeasureSettings = MeasureSettings()
    # tpe: Optuna's TPE; random: uniform sampling; grid: every config of the space once (choices only).
    sampler: SamplerKind = "tpe"
    # False: every trial measured in full: no median or slow-fraction pruning, no batch skipped on a
    # fitted curve's prediction (a config already proven out of memory or crashing is still not run).
    pruning: bool = True

    def __post_init__(self) -> None:
        """Every value is checked here, before anything is loaded, opened or run."""
        for name in ("n_trials", "effective_batch", "steps"):
            value = getattr(self, name)
            if name == "effective_batch" and value == "free":
                continue
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
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
            raise ParameterError(f"lr_scaling must be one of {', '.join(SCALINGS)}, got {self.lr_scaling!r}",
                                 "lr_scaling")
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


@dataclasses.dataclass(frozen=True)
class SearchResult:
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

    def on_note(self, message: str) -> None:
        """Something the user should know while the search runs (it waits for the device, it
        recovered a dead search's trials)."""


def plan_search(options: SearchOptions, workload: Workload | None = None) -> SearchPlan:
    """Load the workload and the space, restrict the space to the device: every input error is raised here."""
    workload = workload or load_workload(options.workload)
    space = load_space(options.space if options.space is not None else workload.space)
    recipe_batch = recipe_effective_batch(workload, space)
    held, notes = _effective_batch(options, workload, space, recipe_batch)
    if held is not None and not space.knobs["batch_size"].is_searched:
        # A batch the space does not search stays the baseline's; accumulation follows the held batch.
        space = space.pinned("batch_size", _recipe(workload, space).batch_size)
    try:
        space, fixed = space.with_effective_batch(held) if held is not None else (
            dataclasses.replace(space, effective_batch=None), [])  # free: any, whatever the file said
    except SearchSpaceError as exc:
        if held != recipe_batch or options.effective_batch is not None:
            raise
        raise SearchSpaceError(f"{exc}, the recipe's, which every trial keeps (--effective-batch free releases "
                               "it)") from None
    notes += fixed
    device = detect_device(options.device)
    unsupported = {name: dict(values) for name, values in unsupported_values(device).items()}
    if not _supports_gradient_checkpointing(workload):
        unsupported["gradient_checkpointing"] = {
            True: "the workload has no gradient_checkpointing hook and its model no gradient_checkpointing_enable()"
        }
    if workload.step_closure:
        unsupported.setdefault("precision", {})["fp16"] = "the optimizer steps with a closure, which GradScaler cannot scale"
    if not _has_2d_convolutions(workload):
        unsupported["channels_last"] = {True: "the model has no 2-D convolutions for channels_last to speed up"}
    cores = _usable_cores()
    too_many = [w for w in _choices(space, "num_workers") if isinstance(w, int) and w > cores]
    if too_many:
        unsupported["num_workers"] = {w: f"more DataLoader workers than this machine's {cores} cores" for w in too_many}
    restricted, dropped = space.restrict(unsupported)
    notes += dropped
    requested = space.baseline(workload.baseline_overrides())
    baseline = _runnable(requested, unsupported, notes)
    if options.sampler == "grid":
        grid = restricted.grid_points(baseline)  # a space with ranges is refused here, before anything runs
        notes.append(f"exhaustive grid: {len(grid)} configs")
    epochs = float(options.epochs if options.epochs is not None else workload.epochs)
    budgets = Budgets(
        memory_budget_bytes=options.max_memory_bytes or device.total_memory_bytes,
        memory_headroom=options.memory_headroom,
        epochs=epochs,
        deadline_seconds=options.deadline_seconds,
        safety_margin_seconds=options.safety_margin_seconds,
        steps=options.steps,
        # autotune train evaluates every evaluate_every epochs: as many times in the full run.
        evaluations=float(max(1, math.floor(epochs / workload.evaluate_every))) if workload.evaluate else 0.0,
        baseline_effective_batch=recipe_batch,
    )
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


def _effective_batch(options: SearchOptions, workload: Workload, space: SearchSpace,
                     recipe_batch: int) -> tuple[int | None, list[str]]:
    """The effective batch every trial keeps, and a note saying why: --effective-batch N, the space
    file's, else the recipe's own; None (--effective-batch free, or the file's "free"): any, each ranked
    by the time to the recipe's progress."""
    if options.effective_batch == "free" or options.effective_batch is None and space.effective_batch == "free":
        source = ("--effective-batch free" if options.effective_batch == "free"
                  else f"{space.source}: effective_batch free")
        return None, [f"{source}: trials may change the recipe's {recipe_batch} samples per optimizer "
                      "step; one that does is ranked by the time to the recipe's progress (gradient noise scale) and "
                      "exported only once a run to that progress is checked against the recipe's"]
    for held, source in ((options.effective_batch, "--effective-batch"), (space.effective_batch, space.source)):
        if held is not None:
            changes = [] if held == recipe_batch else [
                f"{source}: effective batch {held}, not the recipe's {recipe_batch}: every trial is projected to the "
                "recipe's progress (gradient noise scale), and max_lr follows the batch"]
            return held, changes
    return recipe_batch, [f"the recipe's effective batch {recipe_batch} is kept in every trial (--effective-batch "
                          "free releases it)"]


def search(options: SearchOptions, listener: SearchListener | None = None) -> SearchResult:
    """Run (or resume) a study: the baseline first, then TPE-sampled configs, each in a fresh process."""
    import optuna

    deadline = None if options.timeout_seconds is None else time.monotonic() + options.timeout_seconds
    listener = listener or SearchListener()
    with sigterm_as_interrupt():
        sweep_stale_scratch()  # scratch folders of trials whose search died
        plan = plan_search(options)
        storage = open_storage(plan.storage) if storage_exists(plan.storage) else None
        measured = None if storage is None else _baseline_measured(storage, plan.study_name)
        if measured is None:
            # Before the study exists: a workload that cannot train is refused, and nothing is created.
            listener.on_workload_check(plan)
            check = check_workload(options, plan, on_wait=listener.on_note, deadline=deadline)
            dataset_size, step_closure, note = check.dataset_size, check.step_closure, check.note
        else:
            (dataset_size, step_closure), note = measured, None
        if step_closure and not plan.step_closure:
            plan = _with_closure(options, note)
        plan = _cap_batch(plan, dataset_size)
        storage = storage or open_storage(plan.storage)
        with warnings.catch_warnings(), _optuna_quiet():
            # TPE's group/multivariate modes and metric names are stable in practice but flagged experimental.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _search(options, plan, storage, listener, deadline)


def _with_closure(options: SearchOptions, note: str | None) -> SearchPlan:
    """The plan again for a workload whose optimizer's step needs a closure it did not declare."""
    workload = dataclasses.replace(load_workload(options.workload), step_closure=True)
    plan = plan_search(options, workload)
    return dataclasses.replace(plan, step_closure=True, notes=plan.notes + ([note] if note else []))


def _baseline_measured(storage: Any, study_name: str) -> tuple[int, bool | None] | None:
    """The study exists and its baseline ran fine (its workload was checked then): the dataset's
    size it saw (0 where it was not recorded), and whether its optimizer steps with a closure the
    workload did not declare; else None."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        return None
    baseline = _records.baseline_trial(study.get_trials(deepcopy=False))
    if baseline is None or _records.status(baseline) != "ok":
        return None
    return int(baseline.user_attrs.get("dataset_size") or 0), _records.read_setup(study).get("step_closure")


def _cap_batch(plan: SearchPlan, dataset_size: int | None) -> SearchPlan:
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


def _search(
    options: SearchOptions, plan: SearchPlan, storage: Any, listener: SearchListener, deadline: float | None
) -> SearchResult:
    import optuna

    started = time.monotonic()
    plan = _keep_study_objective(storage, plan)
    study = optuna.create_study(
        study_name=plan.study_name,
        storage=storage,
        direction="minimize" if plan.objective == "time" else "maximize",
        load_if_exists=True,
        sampler=_sampler(options),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1) if options.pruning
        else optuna.pruners.NopPruner(),
    )
    _check_or_record_setup(study, options, plan)
    listener.on_plan(plan)
    with Heartbeat(storage, plan.study_name) as heartbeat:
        # Trials end by the share of the budget kept for what follows them (a trial still running then is cut).
        trials_deadline = None if deadline is None else _trials_deadline(plan, options, deadline)
        objective = Objective(options, plan, listener, trials_deadline, storage=storage, process=heartbeat.process)
        objective.recover(study)  # trials a dead search left running: ended as interrupted, run again
        _enqueue_baseline(study, plan, storage)
        n_trials = options.n_trials
        if options.sampler == "grid":
            n_trials = min(n_trials or math.inf, _enqueue_grid(study, plan, storage))
        study.optimize(
            objective,
            n_trials=n_trials,
            timeout=None if trials_deadline is None else max(0.0, trials_deadline - time.monotonic()),
            catch=(TrialError,),
            callbacks=[objective.after_trial],
        )
        repeated = objective.repeated_errors.error()
        if repeated is not None:
            explain_study(study)
            raise repeated
        trials = study.get_trials(deepcopy=False)
        budgets = plan.budgets.with_noise_scale(trials)
        baseline = _records.baseline_trial(trials)
        best = _records.best_trial(trials, plan.objective, budgets)
        best, notes = _check_changed_batch(study, best, baseline, plan, budgets, options, listener, deadline)
        paired, paired_notes = _paired(study, best, baseline, options, deadline)
        notes += paired_notes
        if paired is not None:  # the range test follows the trial the re-measurement settled on
            best = next(t for t in trials if t.number == paired["trial"])
        if best is not None and _records.effective_batch_of(best) == budgets.baseline_effective_batch:
            lr_result, lr_notes = _run_lr_find(study, storage, best, options, listener, deadline, heartbeat.process)
            notes += lr_notes + _check_suggested_lr(study, best, baseline, lr_result, budgets, listener, deadline)
        else:  # max_lr follows a changed batch by its scaling rule, checked against the recipe above
            lr_result = None
    seconds = time.monotonic() - started
    # Everything every search on this study did, for the export's payoff.
    study.set_user_attr("search_seconds", float(study.user_attrs.get("search_seconds") or 0.0) + seconds)
    explain_study(study)  # the final note and figures, the range test included
    return SearchResult(
        study_name=plan.study_name,
        storage=redact(plan.storage),
        trials_run=objective.trials_run,
        best=best,
        baseline=_records.baseline_trial(trials),
        status_counts=_records.status_counts(trials),
        lr_find=lr_result,
        notes=notes,
        paired=paired,
        seconds=seconds,
    )


# Of --timeout, kept from the trials for what follows them: where the effective batch is free, the recipe
# check of a changed batch; with the LR range test on, the test and the recipe check of its max_lr.
RESERVED_SHARE_FREE = 0.35
RESERVED_SHARE_LR = 0.25


def _trials_deadline(plan: SearchPlan, options: SearchOptions, deadline: float) -> float:
    """When trials stop: a share of the budget is kept for the checks that follow them (a changed
    recipe is exported only once checked against the recipe), so that they run within --timeout."""
    if options.timeout_seconds is None:
        return deadline
    share = RESERVED_SHARE_FREE if plan.space.effective_batch is None else RESERVED_SHARE_LR if options.lr_find else 0.0
    return deadline - share * options.timeout_seconds


def _check_changed_batch(study: Any, best: Any, baseline: Any, plan: SearchPlan, budgets: Budgets,
                         options: SearchOptions, listener: SearchListener,
                         deadline: float | None) -> tuple[Any, list[str]]:
    """A best trial at another effective batch than the recipe's: its max_lr by the scaling rule, run to the
    recipe's progress beside the recipe (recipe_check). Where the effective batch is free and the check
    does not keep it (or cannot run), the best trial at the recipe's effective batch goes on instead."""
    from autotune.lr_find import scaled_lr, scaling_rule

    recipe_batch = budgets.baseline_effective_batch
    if best is None or baseline is None or _records.status(baseline) != "ok" or recipe_batch is None:
        return best, []
    batch = _records.effective_batch_of(best)
    if batch == recipe_batch:
        return best, []
    adaptive = best.user_attrs.get("adaptive_optimizer")
    rule = scaling_rule(options.lr_scaling, adaptive)
    max_lr = scaled_lr(plan.baseline.max_lr, batch, recipe_batch, options.lr_scaling, budgets.noise_scale, adaptive)
    kept, verdict = _recipe_check(study, best, baseline, max_lr, f"{rule} max_lr {max_lr:.3g}", budgets, listener,
                                  deadline)
    notes = [verdict]
    if kept or plan.space.effective_batch is not None:  # --effective-batch N: the user's own change
        return best, notes
    held = _records.best_trial(study.get_trials(deepcopy=False), plan.objective, budgets, effective_batch=recipe_batch)
    held = held or baseline
    notes.append(f"trial #{best.number} (effective batch {batch}) is not exported; the best at the recipe's "
                 f"effective batch {recipe_batch}, trial #{held.number}, goes on")
    return held, notes


def _check_suggested_lr(study: Any, best: Any, baseline: Any, lr_result: LRFindResult | None, budgets: Budgets,
                        listener: SearchListener, deadline: float | None) -> list[str]:
    """The range test's max_lr changes the recipe's: it is exported only once a run to the recipe's
    progress is no worse than the recipe's (recipe_check). A searched max_lr is the trial's own."""
    from autotune import recipe_check

    setup = _records.read_setup(study)
    searched = "max_lr" in _records.searched_knobs(setup)
    if lr_result is None or baseline is None or _records.status(baseline) != "ok" or searched:
        return []
    recipe_lr = float(setup["baseline"]["max_lr"])
    if math.isclose(lr_result.max_lr, recipe_lr, rel_tol=1e-9):
        return []
    if recipe_check.stored_check(study, {**best.user_attrs["config"], "max_lr": lr_result.max_lr}) is not None:
        return []
    return [_recipe_check(study, best, baseline, lr_result.max_lr, f"the range test's max_lr {lr_result.max_lr:.3g}",
                          budgets, listener, deadline)[1]]


def _recipe_check(study: Any, trial: Any, baseline: Any, max_lr: float, what: str, budgets: Budgets,
                  listener: SearchListener, deadline: float | None) -> tuple[bool, str]:
    """Trial ``trial`` at ``max_lr`` (``what`` names where the rate came from) run beside the recipe and
    stored with the study: whether the check kept it, and the line saying so."""
    from autotune import recipe_check

    listener.on_recipe_check_start(trial, max_lr, what)
    setup = _records.read_setup(study)
    check = recipe_check.run_check(setup, trial, baseline, max_lr, budgets, deadline=deadline)
    if isinstance(check, str):  # recorded too, so that the export can say why the recipe stays
        check = recipe_check.not_run(setup, trial, baseline, max_lr, budgets, f"could not run: {check}")
    recipe_check.store(study, check)
    return check.kept, f"recipe check ({what}): {check.reason}"


PAIRED_ROUNDS = 2  # at least; more, up to PAIRED_MAX_ROUNDS, while the speedup's noise is above PAIRED_NOISE
PAIRED_MAX_ROUNDS = 6  # and while more rounds could still lower it enough to change the verdict
PAIRED_NOISE = 0.10
PAIRED_CHALLENGERS = 2  # trials measured once re-measured in turn, where export-best would take them


def paired_settled(figures: list[Any], budgets: Budgets | None = None, objective: str = "throughput") -> bool:
    """Whether the side-by-side rounds so far (the challengers' and the winner's figures, then the
    baseline's) are enough: judged on the fastest of them against the baseline, by the study's
    objective, as the re-measurement then names its winner.

    Enough once the speedup's noise is within PAIRED_NOISE. Where the windows' own spread keeps
    the noise above it whatever the rounds (a workload whose steps vary: boxes per image, sequence
    lengths), more rounds are run only while they could still change the verdict: the gain is
    beyond that floor yet still within the noise."""
    from autotune.selection import NOISE_SIGMAS, fastest_against, noise_margin

    if len(figures) < 2:
        return False
    *others, baseline = figures
    winner = fastest_against(others, baseline, budgets or Budgets(), objective)
    noise = noise_margin(winner, baseline)
    if noise <= PAIRED_NOISE:
        return True
    floor = NOISE_SIGMAS * math.hypot(winner.window_spread or 0.0, baseline.window_spread or 0.0)
    if floor <= PAIRED_NOISE:
        return False
    gain = abs(winner.rate / baseline.rate - 1)
    return gain <= floor or gain > noise


def _paired(study: Any, best: Any, baseline: Any, options: SearchOptions, deadline: float | None):
    """The winner and the baseline re-measured in fresh processes, interleaved over rounds, so the
    speedup rests on figures taken side by side (a baseline measured once, first, can be off by the
    machine's drift). Stored with the study (user attribute ``paired``); export-best uses it.

    A trial measured once that export-best would still take over the re-measured winner (faster
    beyond the noise of the two) is re-measured in turn beside the winner and the baseline, up to
    PAIRED_CHALLENGERS times, so the search and the export name the same trial and the exported
    figure is never a lone one that read high by chance."""
    if best is None or baseline is None or best.number == baseline.number or _records.status(baseline) != "ok":
        return None, []
    from autotune.selection import Candidate, fastest_against, gain_over, paired_pool, select

    from autotune import recipe_check

    setup = _records.read_setup(study)
    trials = study.get_trials(deepcopy=False)
    budgets = Budgets.from_json(setup.get("budgets")).with_noise_scale(trials)
    objective = setup.get("objective", "throughput")
    feasible, _dropped = recipe_check.exportable([Candidate.from_trial(t) for t in _records.feasible_trials(trials)],
                                                 setup, recipe_check.stored_checks(study), keep_trials=(best.number,))
    singles = {c.number: c for c in feasible}  # each trial's own figure, measured once
    reference = Candidate.from_trial(baseline)
    measuring = [singles.get(best.number) or Candidate.from_trial(best), reference]
    paired: dict[str, Any] | None = None
    notes: list[str] = []
    runners: list[int] = []  # re-measured because the trials before them did not beat the baseline
    for attempt in range(1 + PAIRED_CHALLENGERS):
        measured, note = _side_by_side(measuring, setup, deadline, budgets, objective, paired)
        if measured is None:
            notes.append(note if paired is None else f"trial #{measuring[0].number} {note}")
            break
        paired = {**measured, "runners_up": runners} if runners else measured
        pool, _held = paired_pool(feasible, paired, budgets, objective)
        chosen = select(pool, next((c for c in pool if c.is_baseline), None), budgets, objective=objective).chosen
        winner = next(c for c in pool if c.number == paired["trial"])
        if chosen.is_baseline:
            # Side by side, nothing beat the baseline. A trial measured once can have read low in a
            # slow process: the next that measured faster than the baseline once gets its turn.
            remeasured = {row["trial"] for row in paired["figures"]}
            rest = [c for c in feasible if c.number not in remeasured and not c.is_baseline
                    and not _records.runs_baseline_config(c.attrs, reference.attrs)]
            runner = fastest_against(rest, reference, budgets, objective) if rest else None
            if runner is None or gain_over(runner, reference, budgets, objective) <= 0:
                break
            line = (f"trial #{winner.number} was no faster than the baseline side by side; trial #{runner.number}, "
                    f"{runner.rate:.1f} {runner.unit}/s once against the baseline's {reference.rate:.1f}, is next")
            beside, runners = "the baseline", [*runners, runner.number]
            following = [runner, reference]
        else:
            # Settled once the export's pick was among the trials just measured side by side; a figure from
            # an earlier round of re-measurement is re-measured again, as the machine may have drifted.
            if chosen.number not in singles or any(c.number == chosen.number for c in measuring):
                break
            if chosen.window_spread is None:
                line = (f"trial #{chosen.number} measured {chosen.rate:.1f} {chosen.unit}/s once, beyond the noise "
                        f"of trial #{winner.number}'s {winner.rate:.1f} side by side")
            else:  # compared as speedups over the baseline of each one's round
                base = next(c for c in pool if c.is_baseline)
                line = (f"trial #{chosen.number} measured {chosen.rate / base.rate:.2f}x the baseline in an earlier "
                        f"re-measurement, beyond the noise of trial #{winner.number}'s {winner.rate / base.rate:.2f}x "
                        "side by side")
            beside = "the two"
            following = [singles[chosen.number], singles.get(winner.number) or measuring[-2], reference]
        if attempt == PAIRED_CHALLENGERS:
            notes.append(f"{line}; not re-measured, as {PAIRED_CHALLENGERS} challengers were already "
                         "(export-best --verify 3 re-measures the top 3)")
            break
        notes.append(f"{line}: re-measured beside {beside}")
        measuring = following
    if paired is not None:
        study.set_user_attr("paired", paired)
    return paired, notes


def _side_by_side(measuring: list[Any], setup: dict[str, Any], deadline: float | None, budgets: Budgets,
                  objective: str, previous: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    """``measuring`` (challengers and the winner, then the baseline) re-measured over interleaved rounds;
    the paired record with the fastest of them as the winner, the figures of ``previous`` kept for
    trials not measured again. None and a note when the time budget or a run stops it."""
    from autotune.selection import fastest_against, noise_margin
    from autotune.verify import verify

    runs = len(measuring) * PAIRED_ROUNDS
    per_run = max((c.attrs.get("wall_seconds") or 0.0) for c in measuring)
    if deadline is not None and deadline - time.monotonic() < runs * per_run + 5:
        return None, ("the winner and the baseline were not re-measured side by side: the time budget is spent "
                      "(export-best --verify 1 does it)") if previous is None else (
                      "was not re-measured: the time budget is spent")
    verification = verify(measuring, setup, rounds=PAIRED_ROUNDS, deadline=deadline, max_rounds=PAIRED_MAX_ROUNDS,
                          enough=lambda figures: paired_settled(figures, budgets, objective))
    measured = {c.number: c for c in verification.candidates}
    if any(c.number not in measured for c in measuring):
        return None, ("the side-by-side re-measurement of the winner and the baseline did not finish"
                      if previous is None else "was not re-measured: a run did not finish")
    *others, reference = (measured[c.number] for c in measuring)
    winner = fastest_against(others, reference, budgets, objective)
    figures = {row["trial"]: row for row in (previous or {}).get("figures") or ()}
    for c in measured.values():
        figures[c.number] = {"trial": c.number, "samples_per_second": c.samples_per_second, "spread": c.spread,
                             "window_spread": c.window_spread,  # the part of each spread rounds do not lower
                             "baseline_samples_per_second": reference.samples_per_second}  # of the same round
    return {
        "trial": winner.number,
        "baseline_trial": reference.number,
        "rounds": verification.rounds,
        "samples_per_second": winner.samples_per_second,
        "spread": winner.spread,
        "baseline_samples_per_second": reference.samples_per_second,
        "baseline_spread": reference.spread,
        "window_spread": winner.window_spread,
        "baseline_window_spread": reference.window_spread,
        "speedup": winner.rate / reference.rate,
        "noise": noise_margin(winner, reference),
        "unit": winner.unit,
        "figures": sorted(figures.values(), key=lambda row: row["trial"]),
        "challengers": list(dict.fromkeys([*(previous or {}).get("challengers", []),
                                           *(c.number for c in others[:-1])])),
        "seconds": verification.seconds + (previous or {}).get("seconds", 0.0),
    }, ""


def _keep_study_objective(storage: Any, plan: SearchPlan) -> SearchPlan:
    """A resumed study keeps the objective it was started with (its direction is fixed)."""
    import optuna

    try:
        study = optuna.load_study(study_name=plan.study_name, storage=storage)
    except KeyError:
        return plan
    recorded = study.user_attrs.get("objective")
    if recorded is None:  # started before the objective was recorded: it maximised throughput
        recorded = "time" if study.direction == optuna.study.StudyDirection.MINIMIZE else "throughput"
    if recorded == plan.objective:
        return plan
    note = f"the study ranks by {recorded} (it was started so); --objective {plan.objective} applies to new studies"
    return dataclasses.replace(plan, objective=recorded, notes=[*plan.notes, note])


def metric_name(objective: str, unit: str) -> str:
    """The objective's name, as optuna-dashboard shows it."""
    return TIME_METRIC_NAME if objective == "time" else f"{unit}/s"


def _run_lr_find(study, storage, best, options: SearchOptions, listener: SearchListener, deadline: float | None,
                 process: SearchProcess):
    """The range test on the winner, in its own process, once per study; it never fails the search.

    A result stored for the winner's effective batch and precision stands; while one search runs
    the test (study user attribute ``lr_find_running``), the others sharing the study do not."""
    if not options.lr_find or best is None:
        return None, []
    stored = stored_result(study, best.user_attrs["config"])
    if stored is not None:
        return stored, [f"the LR range test ran before on trial #{stored.trial}, with this effective batch and "
                        "precision; its suggestion stands"]
    if deadline is not None and deadline - time.monotonic() < 10:
        return None, ["the LR range test was skipped: the time budget is spent (run 'autotune lr-find')"]
    study_id = storage.get_study_id_from_name(study.study_name)
    with study_lock(storage, study.study_name):
        running = study.user_attrs.get("lr_find_running")
        if running and running["process"] != process.key and process_alive(storage, study_id, running["process"]):
            return None, [f"the LR range test is running in another search (pid {running['pid']} on "
                          f"{running['host']}), on trial #{running['trial']}"]
        study.set_user_attr(
            "lr_find_running", {"host": process.host, "pid": process.pid, "trial": best.number, "process": process.key}
        )
    listener.on_lr_find_start(best)
    try:
        return lr_find_for_trial(study, best.number, scaling=options.lr_scaling,  # type: ignore[arg-type]
                                 deadline=deadline), []
    except LRFindError as exc:
        return None, [f"the LR range test did not give a suggestion: {exc}"]
    finally:
        study.set_user_attr("lr_find_running", None)


@contextlib.contextmanager
def _optuna_quiet() -> Iterator[None]:
    """Optuna's own log lines stay out of the way: the listener shows each trial instead."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, where the platform has one)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _choices(space: SearchSpace, name: str) -> tuple[Any, ...]:
    return space.knobs[name].choices or ()


def _has_2d_convolutions(workload: Workload) -> bool:
    """Whether channels_last can act: the model has a 2-D convolution (built on "meta": no memory).
    A model that cannot be built there keeps the knob."""
    import torch

    try:
        with torch.device("meta"):
            model = workload.model()
    except Exception:  # noqa: BLE001 - checked in its trials instead
        return True
    modules = getattr(model, "modules", None)
    if modules is None:
        return True
    return any(isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) for m in modules())


def _supports_gradient_checkpointing(workload: Workload) -> bool:
    if workload.gradient_checkpointing is not None:
        return True
    import torch

    try:
        with torch.device("meta"):  # no memory, no weights: only the model's methods matter here
            model = workload.model()
    except Exception:  # noqa: BLE001 - a model that cannot be built on "meta" is checked in its trial
        return True
    return callable(getattr(model, "gradient_checkpointing_enable", None))


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


def _check_or_record_setup(study: optuna.Study, options: SearchOptions, plan: SearchPlan) -> None:
    """A resumed study must keep its workload and space; a new one records them."""
    setup = {
        "workload": options.workload,
        "space": plan.requested_space,
        "baseline": plan.baseline.to_dict(),
        "device": plan.device.describe(),
        "torch_device": plan.device.torch_device,
        "budgets": plan.budgets.to_json(),
        # What the user asked for (the default memory budget follows the free memory of the day).
        "requested": {**plan.budgets.to_json(), "memory_budget_bytes": options.max_memory_bytes},
        "measure": dataclasses.asdict(options.measure),
        "trial_timeout_seconds": plan.trial_timeout_seconds,
        "objective": plan.objective,
        "step_closure": plan.step_closure,
        "lr_scaling": options.lr_scaling,
    }
    recorded = _records.read_setup(study)
    if not recorded:
        _records.write_setup(study, setup)
        study.set_metric_names([metric_name(plan.objective, plan.unit)])
        return
    if recorded["workload"] != setup["workload"]:
        raise StudyError(
            f"study {plan.study_name!r} tunes workload {recorded['workload']!r}, not {setup['workload']!r}; "
            "use another --study name"
        )
    changes = diff_spaces(recorded["space"], setup["space"])
    if changes:
        raise StudyError(
            f"study {plan.study_name!r} was started with another search space ({'; '.join(changes)}); "
            "use another --study name or the original space"
        )
    if recorded["device"] != setup["device"]:
        plan.notes.append(f"study was started on {recorded['device']}; this run measures on {setup['device']}")
    if recorded.get("requested") != setup["requested"] or recorded.get("measure") != setup["measure"]:
        # export-best selects with the latest budgets; earlier trials keep the verdicts they were given.
        plan.notes.append("budgets or measurement settings differ from the study's last run; the new ones apply")
    current = ("torch_device", "budgets", "requested", "measure", "trial_timeout_seconds", "lr_scaling")
    _records.write_setup(study, {key: setup[key] for key in current})


def _sampler(options: SearchOptions) -> Any:
    import optuna

    if options.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=options.seed, multivariate=True, group=True, constant_liar=True)
    # grid: every trial is an enqueued grid point; the sampler only records them.
    return optuna.samplers.RandomSampler(seed=options.seed)


def _enqueue_grid(study: optuna.Study, plan: SearchPlan, storage: Any) -> int:
    """Every grid point not yet in the study is queued (once across the processes sharing it); the
    number of trials left to run, the baseline's included."""
    import optuna

    with study_lock(storage, study.study_name):
        for point in plan.space.grid_points(plan.baseline):
            study.enqueue_trial(point, skip_if_exists=True)
        return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))


def _enqueue_baseline(study: optuna.Study, plan: SearchPlan, storage: Any) -> None:
    """The baseline runs first, once per study (a failed or interrupted baseline is tried again).

    The check and the enqueue are one step across every process sharing the study (Optuna's
    enqueue_trial(skip_if_exists=True) checks, then inserts: two processes can both insert)."""
    import optuna

    with study_lock(storage, study.study_name):
        for trial in study.get_trials(deepcopy=False):
            if trial.user_attrs.get("baseline") and trial.state != optuna.trial.TrialState.FAIL:
                return
        study.enqueue_trial(plan.space.fixed_params(plan.baseline), user_attrs={"baseline": True})

