"""The search: the baseline first, then the sampler's trials, then the LR range test, the recipe checks and
the side-by-side re-measurement, all recorded in the Optuna study."""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from autotune.exceptions import StudyError, sigterm_as_interrupt
from autotune.runner._scratch import sweep_stale_scratch
from autotune.store import _records
from autotune.store._records import TrialRecord
from autotune.store._storage import open_storage, redact, storage_exists, study_lock, study_names
from autotune.study._checks import check_workload
from autotune.study._notes import explain_study
from autotune.study._objective import Objective, TrialError
from autotune.study._recovery import Heartbeat, SearchProcess, others_running_trials

if TYPE_CHECKING:
    import optuna
from autotune.study._lr_checks import check_changed_batch, check_suggested_lr, cut_trials_at, run_lr_find
from autotune.study._options import SearchListener, SearchOptions, SearchPlan, SearchResult
from autotune.study._paired import remeasure_best
from autotune.study._plan import cap_batch, plan_search, with_closure
from autotune.study._setup import baseline_measured, check_or_record_setup, keep_study_objective


def search(options: SearchOptions, listener: SearchListener | None = None) -> SearchResult:
    """Run (or resume) a study: the baseline first, then TPE-sampled configs, each in a fresh process."""
    import optuna

    deadline = None if options.timeout_seconds is None else time.monotonic() + options.timeout_seconds
    listener = listener or SearchListener()
    with sigterm_as_interrupt():
        sweep_stale_scratch()  # scratch folders of trials whose search died
        plan = plan_search(options)
        storage = _open(plan.storage) if storage_exists(plan.storage) else None
        measured = None if storage is None else baseline_measured(storage, plan.study_name)
        if measured is None:
            # Before the study exists: a workload that cannot train is refused, and nothing is created.
            listener.on_workload_check(plan)
            check = check_workload(options, plan, on_wait=listener.on_note, deadline=deadline)
            dataset_size, step_closure, note = check.dataset_size, check.step_closure, check.note
        else:
            (dataset_size, step_closure), note = measured, None
        if step_closure and not plan.step_closure:
            plan = with_closure(options, note)
        plan = cap_batch(plan, dataset_size)
        storage = storage or _open(plan.storage)
        with warnings.catch_warnings(), _optuna_quiet():
            # TPE's group/multivariate modes and metric names are stable in practice but flagged experimental.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return _search(options, plan, storage, listener, deadline)


def _open(url: str) -> Any:
    """The study's storage, with Optuna's trial heartbeat where it has one: a trial whose heartbeat
    goes silent is ended and run again with autotune's lineage (StaleTrialRetry)."""
    from autotune.study._recovery import StaleTrialRetry

    return open_storage(url, on_stale_trial=StaleTrialRetry())


def _search(
    options: SearchOptions, plan: SearchPlan, storage: Any, listener: SearchListener, deadline: float | None
) -> SearchResult:
    started = time.monotonic()
    plan = keep_study_objective(storage, plan)
    study = _create_study(options, plan, storage)
    check_or_record_setup(study, options, plan)
    listener.on_plan(plan)
    with Heartbeat(storage, plan.study_name) as heartbeat:
        # Trials end by the share of the budget kept for what follows them (a trial still running then is cut).
        trials_deadline = None if deadline is None else cut_trials_at(plan, options, deadline)
        objective = Objective(options, plan, listener, trials_deadline, storage=storage, process=heartbeat.process)
        objective.recover(study)  # trials a dead search left running: ended as interrupted, run again
        _run_trials(study, objective, options, plan, storage, trials_deadline, listener)
        trials = study.get_trials(deepcopy=False)
        _record_held(study, trials, plan)
        if _closes_study(storage, plan, heartbeat):
            best, notes, paired, lr_result = _after_trials(
                study, trials, storage, options, plan, listener, deadline, heartbeat.process
            )
        else:
            best, paired, lr_result = _records.best_trial(trials, plan.objective, plan.budgets), None, None
            notes = [
                "other processes are still running this study's trials: the last of them to finish "
                "re-measures the best beside the baseline and runs the LR range test"
            ]
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


def _record_held(study: optuna.Study, trials: list[optuna.trial.FrozenTrial], plan: SearchPlan) -> None:
    """The knobs held at the baseline, and why, for the note and the export: those whose other values
    the plan dropped before the search (the device, the workload, the probe), and those the guided
    search held."""
    from autotune.knobs._units import format_value
    from autotune.study._guided import GuidedSampler
    from autotune.study._notes import HELD_ATTR

    held: dict[str, str] = {}
    for name, reasons in plan.unsupported.items():
        requested = plan.requested_space.get(name)
        dropped = [
            f"{name}={format_value(value)}: {reason}"
            for value, reason in reasons.items()
            if isinstance(requested, list) and any(value == c and type(value) is type(c) for c in requested)
        ]
        if dropped and not plan.space.knobs[name].is_searched:
            held[name] = f"{name} left at {format_value(plan.baseline.to_dict().get(name))}: " + "; ".join(dropped)
    if isinstance(study.sampler, GuidedSampler):
        held.update(study.sampler.held_knobs(trials))
    study.set_user_attr(HELD_ATTR, held)


def _closes_study(storage: Any, plan: SearchPlan, heartbeat: Heartbeat) -> bool:
    """Whether this process, its trials done, is the one to close the study (the best re-measured
    beside the baseline, the range test): the last of the processes sharing it to finish its trials.
    Saying so and looking at the others is one step across them, so exactly one of them closes."""
    with study_lock(storage, plan.study_name):
        heartbeat.set_phase("closing")
        return not others_running_trials(storage, plan.study_name, heartbeat.process)


def _create_study(options: SearchOptions, plan: SearchPlan, storage: Any) -> optuna.Study:
    """The plan's study, created or loaded (a worker's, which exists), with the options' sampler and pruner."""
    import optuna

    if options.join:
        return optuna.load_study(
            study_name=plan.study_name, storage=storage, sampler=_sampler(options, plan), pruner=_pruner(options)
        )
    return optuna.create_study(
        study_name=plan.study_name,
        storage=storage,
        direction="minimize" if plan.objective == "time" else "maximize",
        load_if_exists=True,
        sampler=_sampler(options, plan),
        pruner=_pruner(options),
    )


def _run_trials(
    study: optuna.Study,
    objective: Objective,
    options: SearchOptions,
    plan: SearchPlan,
    storage: Any,
    trials_deadline: float | None,
    listener: SearchListener,
) -> None:
    """The baseline (and the grid) enqueued, then the trials run until their number or deadline; the
    repeated error raised where every config failed the same way."""
    import optuna

    _enqueue_baseline(study, plan, storage)
    if options.sampler == "guided":
        _enqueue_earlier_best(study, plan, storage, options.workload)
    n_trials = options.n_trials
    if options.sampler == "grid":
        grid = _enqueue_grid(study, plan, storage)
        n_trials = grid if n_trials is None else min(n_trials, grid)
    callbacks = [objective.after_trial]
    target = options.trials_target
    if target is None and options.join and n_trials is None:
        target = _records.read_setup(study).trials_target  # until the study has the trials its searches asked for
    if len(options.devices) > 1:
        if target is None and n_trials is not None:
            target = _trials_taken(study) + n_trials
        _run_slots(study, options, plan, listener, trials_deadline, target)
        return
    if target is not None:
        if _trials_taken(study) >= target:
            return
        # Optuna's own stop at a number of trials, counting the trials other processes run now.
        callbacks.append(optuna.study.MaxTrialsCallback(target, states=_taken_states()))
    study.optimize(
        objective,
        n_trials=n_trials,
        timeout=None if trials_deadline is None else max(0.0, trials_deadline - time.monotonic()),
        catch=(TrialError,),
        callbacks=callbacks,
    )
    repeated = objective.repeated_errors.error()
    if repeated is not None:
        explain_study(study)
        raise repeated


def _run_slots(
    study: optuna.Study,
    options: SearchOptions,
    plan: SearchPlan,
    listener: SearchListener,
    trials_deadline: float | None,
    target: int | None,
) -> None:
    """The trials run by one worker process per device slot, until the study holds ``target`` (None:
    until the time is up, or the study's own target); a slot
    that failed is a note, every slot failing the same way an error."""
    from autotune.study._slots import run_slots, slot_command

    remaining = None if trials_deadline is None else trials_deadline - time.monotonic()
    codes = run_slots(
        options.devices,
        lambda device: slot_command(plan.study_name, plan.storage, options.workload, device, target, remaining),
        listener.on_slot_line,
    )
    failed = {slot: code for slot, code in codes.items() if code != 0}
    if failed and len(failed) == len(codes):
        raise StudyError(
            f"every device slot's worker failed ({', '.join(f'{s}: exit {c}' for s, c in failed.items())})"
        )
    for slot, code in failed.items():
        listener.on_note(f"the worker on {slot} exited with code {code}; the other slots went on")


def _taken_states() -> tuple[optuna.trial.TrialState, ...]:
    """The states of the trials a target counts: those that ended and those running now, so that the
    processes sharing the study stop starting trials once they reach it, none past it."""
    import optuna

    state = optuna.trial.TrialState
    return (state.COMPLETE, state.PRUNED, state.FAIL, state.RUNNING)


def _trials_taken(study: optuna.Study) -> int:
    """The study's trials that ended or run now."""
    return len(study.get_trials(deepcopy=False, states=_taken_states()))


def _after_trials(
    study: optuna.Study,
    trials: list[optuna.trial.FrozenTrial],
    storage: Any,
    options: SearchOptions,
    plan: SearchPlan,
    listener: SearchListener,
    deadline: float | None,
    process: SearchProcess,
) -> tuple[Any, list[str], dict[str, Any] | None, Any]:
    """What follows the trials: the best checked at a changed batch, re-measured beside the baseline,
    then its LR range test; the best, the notes, the paired record and the range test's result."""
    budgets = plan.budgets.with_noise_scale(trials)
    baseline = _records.baseline_trial(trials)
    best = _records.best_trial(trials, plan.objective, budgets)
    best, notes = check_changed_batch(study, best, baseline, plan, budgets, options, listener, deadline)
    paired, paired_notes = remeasure_best(study, best, baseline, options, deadline)
    notes += paired_notes
    if paired is not None:  # the range test follows the trial the re-measurement settled on
        best = next(t for t in trials if t.number == paired["trial"])
    if best is not None and _records.effective_batch_of(best) == budgets.baseline_effective_batch:
        lr_result, lr_notes = run_lr_find(study, storage, best, options, listener, deadline, process)
        notes += lr_notes + check_suggested_lr(study, best, baseline, lr_result, budgets, listener, deadline)
    else:  # max_lr follows a changed batch by its scaling rule, checked against the recipe above
        lr_result = None
    return best, notes, paired, lr_result


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


def _sampler(options: SearchOptions, plan: SearchPlan) -> Any:
    import optuna

    tpe = optuna.samplers.TPESampler(seed=options.seed, multivariate=True, group=True, constant_liar=True)
    if options.sampler == "guided":
        from autotune.study._guided import GuidedSampler

        return GuidedSampler(plan.space, plan.baseline, tpe, maximize=plan.objective != "time")
    if options.sampler == "tpe":
        return tpe
    # grid: every trial is an enqueued grid point; the sampler only records them.
    return optuna.samplers.RandomSampler(seed=options.seed)


def _pruner(options: SearchOptions) -> Any:
    """The guided search's pruner stops a trial reading well below the best so far (not with a slow
    fraction of 0: no trial is ended for being slow); TPE's, Optuna's median rule; none without pruning."""
    import optuna

    if not options.pruning:
        return optuna.pruners.NopPruner()
    if options.sampler == "guided":
        from autotune.study._guided import IncumbentPruner

        return IncumbentPruner() if options.slow_fraction > 0 else optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)


def _enqueue_grid(study: optuna.Study, plan: SearchPlan, storage: Any) -> int:
    """Every grid point not yet in the study is queued (once across the processes sharing it); the
    number of trials left to run, the baseline's included."""
    import optuna

    with study_lock(storage, study.study_name):
        for point in plan.space.grid_points(plan.baseline):
            study.enqueue_trial(point, skip_if_exists=True)
        return len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))


def _enqueue_earlier_best(study: optuna.Study, plan: SearchPlan, storage: Any, workload: str) -> None:
    """A new study starts from what earlier ones learned: the best config of each other study in the
    storage with the same workload on the same device goes right after the baseline (where the space
    holds it), so the guided stages start from there if it is still the fastest."""
    import optuna

    with study_lock(storage, study.study_name):
        if len(study.get_trials(deepcopy=False)) > 1:  # not a new study: its own records lead
            return
        for name in study_names(storage):  # the study locks of a proxy's storage left out
            if name == study.study_name:
                continue
            earlier = optuna.load_study(study_name=name, storage=storage)
            setup = _records.read_setup(earlier)
            if setup.workload != workload or setup.device != plan.device.describe():
                continue
            best = _records.best_trial(earlier.get_trials(deepcopy=False), setup.objective)
            params = None if best is None else _earlier_params(plan, TrialRecord.of(best).config or {})
            if params is not None:
                study.enqueue_trial(params, user_attrs={"from_study": name}, skip_if_exists=True)


def _earlier_params(plan: SearchPlan, config: dict[str, Any]) -> dict[str, Any] | None:
    """An earlier study's config as this space's params, or None where this space does not hold it."""
    from autotune.knobs._table import WORKER_KNOBS

    params = {}
    for name in plan.space.searched:
        if name in WORKER_KNOBS and not config.get("num_workers"):
            continue
        if name not in config or not plan.space.knobs[name].contains(config[name]):
            return None
        params[name] = config[name]
    return params


def _enqueue_baseline(study: optuna.Study, plan: SearchPlan, storage: Any) -> None:
    """The baseline runs first, once per study (a failed or interrupted baseline is tried again).

    The check and the enqueue are one step across every process sharing the study (Optuna's
    enqueue_trial(skip_if_exists=True) checks, then inserts: two processes can both insert)."""
    import optuna

    with study_lock(storage, study.study_name):
        for trial in study.get_trials(deepcopy=False):
            if TrialRecord.of(trial).baseline and trial.state != optuna.trial.TrialState.FAIL:
                return
        study.enqueue_trial(plan.space.fixed_params(plan.baseline), user_attrs={"baseline": True})
