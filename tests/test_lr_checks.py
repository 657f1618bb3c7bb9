"""autotune.study._lr_checks: the learning-rate steps after the speed search: the time the trials leave for
them, the recipe check of a best trial at another effective batch, the check of the range test's max_lr,
and the range test itself, run once per study and in one search at a time."""

from __future__ import annotations

import dataclasses
import time

import optuna
import pytest
from conftest import recipe_checks_keep, workload_spec
from optuna.trial import TrialState

from autotune.knobs._config import TrainConfig
from autotune.store._storage import open_storage
from autotune.study import _recipe_check as recipe_check
from autotune.study._lr_checks import (
    RESERVED_SHARE_FREE,
    RESERVED_SHARE_LR,
    check_changed_batch,
    check_suggested_lr,
    cut_trials_at,
    run_lr_find,
)
from autotune.study._lr_find import LRFindResult, stored_result
from autotune.study._options import SearchListener, SearchOptions
from autotune.study._plan import plan_search
from autotune.study._recovery import SearchProcess


class _Listener(SearchListener):
    def __init__(self) -> None:
        self.checks: list[tuple[int, float, str]] = []
        self.range_tests: list[int] = []

    def on_recipe_check_start(self, trial, max_lr, what) -> None:
        self.checks.append((trial.number, max_lr, what))

    def on_lr_find_start(self, trial) -> None:
        self.range_tests.append(trial.number)


# --- the time kept from the trials ---------------------------------------------------------------------------


def test_cut_trials_at_keeps_a_share_of_the_budget_for_the_checks_that_follow_the_trials():
    free = plan_search(SearchOptions(workload=workload_spec(), effective_batch="free"))
    held = plan_search(SearchOptions(workload=workload_spec()))

    def cut(plan, **options):
        return cut_trials_at(plan, SearchOptions(workload=workload_spec(), **options), deadline=1000.0)

    assert cut(free, timeout_seconds=100.0) == pytest.approx(1000.0 - RESERVED_SHARE_FREE * 100.0)
    assert cut(held, timeout_seconds=100.0) == pytest.approx(1000.0 - RESERVED_SHARE_LR * 100.0)
    assert cut(held, timeout_seconds=100.0, lr_find=False) == 1000.0  # nothing follows the trials
    assert cut(free) == 1000.0  # no --timeout: the deadline is what the caller gave


# --- a best trial at another effective batch -------------------------------------------------------------


def _study(storage_url: str, space: dict | None = None) -> optuna.Study:
    """A finished study of tiny at the recipe's effective batch 8 (max_lr 0.01): the baseline #0, #1 at
    batch 32 (the fastest), #2 at batch 8 in bf16."""
    study = optuna.create_study(study_name="tiny", storage=open_storage(storage_url))
    baseline = TrainConfig(batch_size=8, max_lr=0.01)
    setup = {
        "space": space or {"batch_size": [8, 32], "precision": ["fp32", "bf16"]},
        "baseline": baseline.to_dict(),
        "budgets": {"baseline_effective_batch": 8},
        "objective": "time",
        "workload": workload_spec(),  # last: it marks the setup complete
    }
    for key, value in setup.items():
        study.set_user_attr(key, value)
    for number, (config, rate) in enumerate(
        [
            (baseline, 1000.0),
            (dataclasses.replace(baseline, batch_size=32), 4000.0),
            (dataclasses.replace(baseline, precision="bf16"), 2000.0),
        ]
    ):
        attrs = {"config": config.to_dict(), "status": "ok", "samples_per_second": rate, "dataset_size": 512}
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE, value=1024 / rate, user_attrs={**attrs, "baseline": number == 0}
            )
        )
    return study


def _changed(storage_url, **options):
    """check_changed_batch on _study's #1 (batch 32), the search planned with ``options``."""
    study = _study(storage_url)
    plan = plan_search(SearchOptions(workload=workload_spec(), **options))
    listener = _Listener()
    best, notes = check_changed_batch(
        study, study.trials[1], study.trials[0], plan, plan.budgets, SearchOptions(), listener, None
    )
    return study, best, notes, listener


def _not_kept(monkeypatch, why: str | None = None):
    """recipe_check.run_check answering: not kept (or, with ``why``, could not run)."""

    def check(setup, trial, recipe, max_lr, budgets, *, deadline=None, seeds=recipe_check.SEEDS):
        if why is not None:
            return why
        return dataclasses.replace(
            recipe_check.not_run(setup, trial, recipe, max_lr, budgets, f"trial #{trial.number}: worse"),
            steps=10,
            recipe_steps=10,
        )

    monkeypatch.setattr(recipe_check, "run_check", check)


def test_a_best_trial_at_the_recipes_effective_batch_needs_no_recipe_check(storage_url):
    study = _study(storage_url)
    plan = plan_search(SearchOptions(workload=workload_spec(), effective_batch="free"))
    listener = _Listener()
    best, notes = check_changed_batch(
        study, study.trials[2], study.trials[0], plan, plan.budgets, SearchOptions(), listener, None
    )
    assert (best.number, notes, listener.checks) == (2, [], [])
    assert recipe_check.stored_checks(study) == []


def test_a_best_trial_at_another_effective_batch_kept_by_its_recipe_check_goes_on(storage_url):
    with recipe_checks_keep():
        study, best, notes, listener = _changed(storage_url, effective_batch="free")
    # No noise scale measured: AdaScale's gain at batch 32 is 1, and max_lr stays the recipe's.
    assert listener.checks == [(1, pytest.approx(0.01), "adascale max_lr 0.01")]
    assert (best.number, notes) == (1, ["recipe check (adascale max_lr 0.01): trial #1: kept (a test's stand-in)"])
    assert [(check.trial, check.kept) for check in recipe_check.stored_checks(study)] == [(1, True)]


def test_a_best_trial_at_another_effective_batch_not_kept_gives_way_to_the_best_at_the_recipes(
    storage_url, monkeypatch
):
    _not_kept(monkeypatch)
    study, best, notes, _listener = _changed(storage_url, effective_batch="free")
    assert best.number == 2  # the fastest at the recipe's effective batch 8
    assert notes == [
        "recipe check (adascale max_lr 0.01): trial #1: worse",
        "trial #1 (effective batch 32) is not exported; the best at the recipe's effective batch 8, trial #2, goes on",
    ]


def test_a_batch_the_user_asked_for_goes_on_whatever_its_recipe_check_says(storage_url, monkeypatch):
    _not_kept(monkeypatch)
    study, best, notes, _listener = _changed(storage_url, effective_batch=32)
    assert (best.number, notes) == (1, ["recipe check (adascale max_lr 0.01): trial #1: worse"])


def test_a_recipe_check_that_could_not_run_is_recorded_as_not_kept(storage_url, monkeypatch):
    _not_kept(monkeypatch, why="the time budget is spent")
    study, best, notes, _listener = _changed(storage_url, effective_batch="free")
    assert best.number == 2
    assert notes[0] == "recipe check (adascale max_lr 0.01): could not run: the time budget is spent"
    [check] = recipe_check.stored_checks(study)
    assert (check.trial, check.kept, check.steps, check.reason) == (
        1,
        False,
        0,
        "could not run: the time budget is spent",
    )


def test_no_recipe_check_without_a_baseline_that_ran_fine(storage_url):
    study = _study(storage_url)
    failed = optuna.trial.create_trial(state=TrialState.PRUNED, user_attrs={"baseline": True, "status": "oom"})
    study.add_trial(failed)
    plan = plan_search(SearchOptions(workload=workload_spec(), effective_batch="free"))
    best, notes = check_changed_batch(
        study, study.trials[1], study.trials[3], plan, plan.budgets, SearchOptions(), _Listener(), None
    )
    assert (best.number, notes) == (1, [])


# --- the range test's max_lr -----------------------------------------------------------------------------


def _range_test(max_lr: float, trial: int = 0) -> LRFindResult:
    return LRFindResult(
        config=TrainConfig().to_dict(),
        lrs=[1e-3, 1e-2],
        losses=[1.0, 0.5],
        smoothed=[1.0, 0.5],
        stopped_early=False,
        suggestion=max_lr,
        lr_at_min_loss=max_lr,
        lr_steepest=max_lr,
        centre_lr=1e-3,
        trial=trial,
    )


def test_a_range_test_max_lr_checked_before_is_not_checked_again(finished_study):
    storage_url, name = finished_study
    study = optuna.load_study(study_name=name, storage=storage_url)
    best = study.trials[0]
    tested = stored_result(study, best.user_attrs["config"])  # demo-v0's: its recipe check is stored
    listener = _Listener()
    assert check_suggested_lr(study, best, best, tested, study_budgets(study), listener, None) == []
    assert listener.checks == []


def test_a_new_range_test_max_lr_is_checked_against_the_recipe(finished_study):
    storage_url, name = finished_study
    study = optuna.load_study(study_name=name, storage=storage_url)
    best, listener = study.trials[0], _Listener()
    with recipe_checks_keep():
        notes = check_suggested_lr(study, best, best, _range_test(0.005), study_budgets(study), listener, None)
    assert notes == ["recipe check (the range test's max_lr 0.005): trial #0: kept (a test's stand-in)"]
    assert listener.checks == [(0, 0.005, "the range test's max_lr 0.005")]
    checked = sorted(check.config["max_lr"] for check in recipe_check.stored_checks(study, trial=0))
    assert checked == [pytest.approx(0.0027825594022071244), 0.005]  # the one stored before, and this one


def test_no_range_test_check_where_nothing_changes_the_recipes_max_lr(finished_study, storage_url):
    storage, name = finished_study
    study = optuna.load_study(study_name=name, storage=storage)
    best, budgets = study.trials[0], study_budgets(study)
    assert check_suggested_lr(study, best, best, None, budgets, _Listener(), None) == []  # no range test ran
    recipes = float(study.user_attrs["baseline"]["max_lr"])
    assert check_suggested_lr(study, best, best, _range_test(recipes), budgets, _Listener(), None) == []
    searched = _study(storage_url, space={"batch_size": 8, "max_lr": {"low": 1e-3, "high": 1e-1, "log": True}})
    trial = searched.trials[2]  # a searched max_lr is the trial's own: nothing to check
    assert check_suggested_lr(searched, trial, searched.trials[0], _range_test(0.05), budgets, _Listener(), None) == []


def study_budgets(study):
    from autotune.study._budget import Budgets

    return Budgets.from_json(study.user_attrs.get("budgets"))


# --- the range test, once per study ----------------------------------------------------------------------


@pytest.fixture
def study_with_a_winner(storage_url):
    """A study whose only trial (#0) finished fine with the default config."""
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name="lr-once", storage=storage, direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=1.0, user_attrs={"config": TrainConfig().to_dict(), "status": "ok"}
        )
    )
    return study, storage, study.trials[0]


def test_search_lr_find_runs_in_one_search_at_a_time(study_with_a_winner):
    study, storage, best = study_with_a_winner
    elsewhere = SearchProcess(host="gpu-node-7", machine="another-machine", pid=4242, started=1.0)
    study_id = storage.get_study_id_from_name(study.study_name)
    storage.set_study_system_attr(study_id, elsewhere.key, {**elsewhere.to_json(), "heartbeat": time.time()})
    study.set_user_attr("lr_find_running", {"host": "gpu-node-7", "pid": 4242, "trial": 0, "process": elsewhere.key})

    result, notes = run_lr_find(study, storage, best, SearchOptions(), SearchListener(), None, SearchProcess.current())
    assert result is None
    assert notes == ["the LR range test is running in another search (pid 4242 on gpu-node-7), on trial #0"]
    assert "lr_find" not in study.user_attrs  # it did not run here


def test_search_lr_find_result_for_the_winners_batch_and_precision_stands(study_with_a_winner):
    study, storage, best = study_with_a_winner
    earlier = LRFindResult(
        config=TrainConfig().to_dict(),
        lrs=[1e-3, 1e-2],
        losses=[1.0, 0.5],
        smoothed=[1.0, 0.5],
        stopped_early=False,
        suggestion=2e-3,
        lr_at_min_loss=1e-2,
        lr_steepest=2e-3,
        centre_lr=1e-3,
        trial=0,
    )
    study.set_user_attr("lr_find", {"0": earlier.to_json()})

    result, notes = run_lr_find(study, storage, best, SearchOptions(), SearchListener(), None, SearchProcess.current())
    assert result == earlier
    assert notes == [
        "the LR range test ran before on trial #0, with this effective batch and precision; its suggestion stands"
    ]


def test_run_lr_find_is_skipped_when_it_is_off_or_the_time_budget_is_spent(study_with_a_winner):
    study, storage, best = study_with_a_winner
    process = SearchProcess.current()
    assert run_lr_find(study, storage, best, SearchOptions(lr_find=False), SearchListener(), None, process) == (
        None,
        [],
    )
    assert run_lr_find(study, storage, None, SearchOptions(), SearchListener(), None, process) == (None, [])
    result, notes = run_lr_find(study, storage, best, SearchOptions(), SearchListener(), time.monotonic() + 5, process)
    assert result is None
    assert notes == ["the LR range test was skipped: the time budget is spent (run 'autotune lr-find')"]


def test_run_lr_find_that_gives_no_suggestion_is_a_note_and_frees_the_study_for_another_search(
    finished_study, set_figures
):
    storage_url, name = finished_study
    study = optuna.load_study(study_name=name, storage=storage_url)
    set_figures(lambda job: 1000.0)  # its LR sweep is refused
    best = study.trials[1]  # bf16: the range test stored for trial #0 (fp32) does not apply to it
    listener = _Listener()
    result, notes = run_lr_find(
        study, open_storage(storage_url), best, SearchOptions(), listener, None, SearchProcess.current()
    )
    assert result is None
    assert notes == [
        "the LR range test did not give a suggestion: the LR range test ended as error: set figures: no LR sweep "
        "runs here"
    ]
    assert listener.range_tests == [1]
    assert study.user_attrs["lr_find_running"] is None  # whichever way it ended
