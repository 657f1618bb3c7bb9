"""The learning-rate steps after the speed search: the LR range test on the best config, the check of its
suggestion, and the recipe checks of a changed effective batch or max_lr, with the time they keep back."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from autotune.store import _records
from autotune.store._records import TrialRecord
from autotune.store._storage import study_lock
from autotune.study._budget import Budgets
from autotune.study._lr_find import LRFindError, LRFindResult, lr_find_for_trial, stored_result
from autotune.study._recovery import SearchProcess, process_alive

if TYPE_CHECKING:
    pass
from autotune.study._options import SearchListener, SearchOptions, SearchPlan

# Of --timeout, kept from the trials for what follows them: where the effective batch is free, the recipe
# check of a changed batch; with the LR range test on, the test and the recipe check of its max_lr.
RESERVED_SHARE_FREE = 0.35


RESERVED_SHARE_LR = 0.25


def cut_trials_at(plan: SearchPlan, options: SearchOptions, deadline: float) -> float:
    """When trials stop: a share of the budget is kept for the checks that follow them (a changed
    recipe is exported only once checked against the recipe), so that they run within --timeout."""
    if options.timeout_seconds is None:
        return deadline
    share = RESERVED_SHARE_FREE if plan.space.effective_batch is None else RESERVED_SHARE_LR if options.lr_find else 0.0
    return deadline - share * options.timeout_seconds


def check_changed_batch(
    study: Any,
    best: Any,
    baseline: Any,
    plan: SearchPlan,
    budgets: Budgets,
    options: SearchOptions,
    listener: SearchListener,
    deadline: float | None,
) -> tuple[Any, list[str]]:
    """A best trial at another effective batch than the recipe's: its max_lr by the scaling rule, run to the
    recipe's progress beside the recipe (recipe_check). Where the effective batch is free and the check
    does not keep it (or cannot run), the best trial at the recipe's effective batch goes on instead."""
    from autotune.study._lr_find import scaled_lr, scaling_rule

    recipe_batch = budgets.baseline_effective_batch
    if best is None or baseline is None or _records.status(baseline) != "ok" or recipe_batch is None:
        return best, []
    batch = _records.effective_batch_of(best)
    if batch == recipe_batch:
        return best, []
    adaptive = TrialRecord.of(best).adaptive_optimizer
    rule = scaling_rule(options.lr_scaling, adaptive)
    max_lr = scaled_lr(plan.baseline.max_lr, batch, recipe_batch, options.lr_scaling, budgets.noise_scale, adaptive)
    kept, verdict = _recipe_check(
        study, best, baseline, max_lr, f"{rule} max_lr {max_lr:.3g}", budgets, listener, deadline
    )
    notes = [verdict]
    if kept or plan.space.effective_batch is not None:  # --effective-batch N: the user's own change
        return best, notes
    held = _records.best_trial(study.get_trials(deepcopy=False), plan.objective, budgets, effective_batch=recipe_batch)
    held = held or baseline
    notes.append(
        f"trial #{best.number} (effective batch {batch}) is not exported; the best at the recipe's "
        f"effective batch {recipe_batch}, trial #{held.number}, goes on"
    )
    return held, notes


def check_suggested_lr(
    study: Any,
    best: Any,
    baseline: Any,
    lr_result: LRFindResult | None,
    budgets: Budgets,
    listener: SearchListener,
    deadline: float | None,
) -> list[str]:
    """The range test's max_lr changes the recipe's: it is exported only once a run to the recipe's
    progress is no worse than the recipe's (recipe_check). A searched max_lr is the trial's own."""
    from autotune.study import _recipe_check as recipe_check

    setup = _records.read_setup(study)
    searched = "max_lr" in _records.searched_knobs(setup)
    if lr_result is None or baseline is None or _records.status(baseline) != "ok" or searched:
        return []
    recipe_lr = float(setup.baseline["max_lr"])
    if math.isclose(lr_result.max_lr, recipe_lr, rel_tol=1e-9):
        return []
    if recipe_check.stored_check(study, {**TrialRecord.of(best).config, "max_lr": lr_result.max_lr}) is not None:
        return []
    return [
        _recipe_check(
            study,
            best,
            baseline,
            lr_result.max_lr,
            f"the range test's max_lr {lr_result.max_lr:.3g}",
            budgets,
            listener,
            deadline,
        )[1]
    ]


def _recipe_check(
    study: Any,
    trial: Any,
    baseline: Any,
    max_lr: float,
    what: str,
    budgets: Budgets,
    listener: SearchListener,
    deadline: float | None,
) -> tuple[bool, str]:
    """Trial ``trial`` at ``max_lr`` (``what`` names where the rate came from) run beside the recipe and
    stored with the study: whether the check kept it, and the line saying so."""
    from autotune.study import _recipe_check as recipe_check

    listener.on_recipe_check_start(trial, max_lr, what)
    setup = _records.read_setup(study)
    check = recipe_check.run_check(setup, trial, baseline, max_lr, budgets, deadline=deadline)
    if isinstance(check, str):  # recorded too, so that the export can say why the recipe stays
        check = recipe_check.not_run(setup, trial, baseline, max_lr, budgets, f"could not run: {check}")
    recipe_check.store(study, check)
    return check.kept, f"recipe check ({what}): {check.reason}"


def run_lr_find(
    study: Any,
    storage: Any,
    best: Any,
    options: SearchOptions,
    listener: SearchListener,
    deadline: float | None,
    process: SearchProcess,
) -> tuple[LRFindResult | None, list[str]]:
    """The range test on the winner, in its own process, once per study; it never fails the search.

    A result stored for the winner's effective batch and precision stands; while one search runs
    the test (study user attribute ``lr_find_running``), the others sharing the study do not."""
    if not options.lr_find or best is None:
        return None, []
    stored = stored_result(study, TrialRecord.of(best).config)
    if stored is not None:
        return stored, [
            f"the LR range test ran before on trial #{stored.trial}, with this effective batch and "
            "precision; its suggestion stands"
        ]
    if deadline is not None and deadline - time.monotonic() < 10:
        return None, ["the LR range test was skipped: the time budget is spent (run 'autotune lr-find')"]
    study_id = storage.get_study_id_from_name(study.study_name)
    with study_lock(storage, study.study_name):
        running = study.user_attrs.get("lr_find_running")
        if running and running["process"] != process.key and process_alive(storage, study_id, running["process"]):
            return None, [
                f"the LR range test is running in another search (pid {running['pid']} on "
                f"{running['host']}), on trial #{running['trial']}"
            ]
        study.set_user_attr(
            "lr_find_running", {"host": process.host, "pid": process.pid, "trial": best.number, "process": process.key}
        )
    listener.on_lr_find_start(best)
    try:
        return lr_find_for_trial(
            study,
            best.number,
            scaling=options.lr_scaling,  # type: ignore[arg-type]
            deadline=deadline,
        ), []
    except LRFindError as exc:
        return None, [f"the LR range test did not give a suggestion: {exc}"]
    finally:
        study.set_user_attr("lr_find_running", None)
