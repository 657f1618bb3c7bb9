"""The recipe check: a changed recipe run to the recipe's progress beside the recipe, over seeds."""

from __future__ import annotations

import types

import pytest
from conftest import workload_spec

from autotune.knobs._config import TrainConfig
from autotune.study import _recipe_check as recipe_check
from autotune.study._budget import Budgets
from autotune.study._selection import Candidate

FAST = {"warmup_steps": 1, "windows": 2, "window_seconds": 0.2, "max_window_steps": 20, "seed": 0}


def _trial(number: int, batch: int, rate: float, *, accumulation: int = 1, baseline: bool = False, **extra):
    attrs = {
        "config": TrainConfig(batch_size=batch, accumulation_steps=accumulation, max_lr=0.01).to_dict(),
        "samples_per_second": rate,
        "dataset_size": 512,
        "startup_seconds": 0.5,
        "warmup_seconds": 0.1,
        "baseline": baseline,
        **extra,
    }
    return types.SimpleNamespace(number=number, user_attrs=attrs)


def _setup(**budgets) -> dict:
    return {
        "workload": workload_spec(),
        "measure": FAST,
        "baseline": TrainConfig(batch_size=8, max_lr=0.01).to_dict(),
        "budgets": Budgets(epochs=2.0, baseline_effective_batch=8, **budgets).to_json(),
        "space": {},
    }


def test_changes_recipe_names_the_effective_batch_and_the_max_lr():
    recipe = {"max_lr": 0.01}
    assert recipe_check.changes_recipe(TrainConfig(batch_size=8, max_lr=0.01).to_dict(), recipe, 8) == []
    assert (
        recipe_check.changes_recipe(TrainConfig(batch_size=4, accumulation_steps=2, max_lr=0.01).to_dict(), recipe, 8)
        == []
    )
    assert recipe_check.changes_recipe(TrainConfig(batch_size=64, max_lr=0.03).to_dict(), recipe, 8) == [
        "effective batch 64 (the recipe's 8)",
        "max_lr 0.03 (the recipe's 0.01)",
    ]


def test_plan_steps_runs_the_candidate_to_the_recipes_progress():
    budgets = Budgets(epochs=100.0, baseline_effective_batch=8, noise_scale=56.0)
    recipe, candidate = _trial(0, 8, 800.0), _trial(1, 64, 3200.0)
    steps = recipe_check.plan_steps(
        candidate.user_attrs, recipe.user_attrs, budgets, seconds_left=None, run_seconds=2.0
    )
    # 2 s of the recipe at 800 samples/s is 200 steps of 8; batch 64 needs (1 + 64/56) / (1 + 8/56) = 1.875x
    # their 1600 samples: 3000, in 47 steps.
    assert steps == (200, round(200 * 8 * 1.875 / 64))


def test_plan_steps_is_no_longer_than_the_full_run():
    budgets = Budgets(epochs=2.0, baseline_effective_batch=8, noise_scale=56.0)
    steps = recipe_check.plan_steps(
        _trial(1, 64, 3200.0).user_attrs, _trial(0, 8, 800.0).user_attrs, budgets, seconds_left=None, run_seconds=60.0
    )
    assert steps[0] == 512 * 2 // 8  # the recipe's whole run: 128 steps


def test_plan_steps_within_a_time_budget_or_says_why_not():
    budgets = Budgets(epochs=100.0, baseline_effective_batch=8, noise_scale=56.0)
    recipe, candidate = _trial(0, 8, 800.0), _trial(1, 64, 3200.0)
    # Per seed: 1.2 s of starts, then 0.01 + 1.875 x 8 / 3200 s per recipe step on both sides.
    recipe_steps, _ = recipe_check.plan_steps(candidate.user_attrs, recipe.user_attrs, budgets, seconds_left=30.0)
    assert recipe_steps == int((30.0 / 3 - 1.2) / (8 / 800 + 1.875 * 8 / 3200))
    assert recipe_check.plan_steps(candidate.user_attrs, recipe.user_attrs, budgets, seconds_left=4.0) == (
        "the time budget leaves room for 9 of the recipe's steps per run, fewer than 20"
    )


def _candidates(*trials) -> list[Candidate]:
    return [Candidate.from_trial(trial) for trial in trials]


def test_exportable_keeps_a_changed_batch_only_with_a_kept_check():
    baseline, same, larger = (
        _trial(0, 8, 800.0, baseline=True),
        _trial(1, 4, 900.0, accumulation=2),
        _trial(2, 64, 3000.0),
    )
    candidates = _candidates(baseline, same, larger)
    kept, lines = recipe_check.exportable(candidates, _setup(), [])
    assert [c.number for c in kept] == [0, 1]
    assert lines == [
        "1 trial at another effective batch than the recipe's 8 (#2) is not exported without a recipe "
        "check that keeps it"
    ]
    check = types.SimpleNamespace(trial=2, kept=True, reason="fine")
    assert [c.number for c in recipe_check.exportable(candidates, _setup(), [check])[0]] == [0, 1, 2]
    failed = types.SimpleNamespace(trial=2, kept=False, reason="trial #2 ...: worse")
    assert recipe_check.exportable(candidates, _setup(), [failed])[1][1] == "recipe check: trial #2 ...: worse"


def test_exportable_where_the_space_fixes_the_effective_batch_takes_every_candidate():
    candidates = _candidates(_trial(0, 64, 800.0, baseline=True), _trial(1, 32, 900.0, accumulation=2))
    setup = {**_setup(), "space": {"effective_batch": 64}}  # --effective-batch 64: the user's own change
    assert recipe_check.exportable(candidates, setup, []) == (candidates, [])
    old = {**_setup(), "budgets": {"epochs": 2.0}}  # a study from before the recipe batch was recorded
    assert recipe_check.exportable(candidates, old, []) == (candidates, [])


@pytest.mark.parametrize("max_lr, kept", [(0.01, True), (1.0e6, False)])
def test_run_check_keeps_the_recipe_itself_and_refuses_a_rate_that_diverges(max_lr, kept):
    """The candidate at the recipe's own config and rate ends as the recipe does; at 1e6 it diverges."""
    recipe = _trial(0, 8, 20000.0, baseline=True)
    candidate = _trial(1, 8, 20000.0)
    check = recipe_check.run_check(
        _setup(), candidate, recipe, max_lr, Budgets(epochs=2.0, baseline_effective_batch=8), seeds=2
    )
    assert check.kept is kept, check.reason
    assert (check.steps, check.recipe_steps, check.seeds) == (check.recipe_steps, min(128, check.recipe_steps), [1, 2])
    assert len(check.recipe_losses) == 2 and all(loss is not None for loss in check.recipe_losses)
    if kept:
        assert check.losses == pytest.approx(check.recipe_losses)  # the same run, the same seeds
        assert check.reason.endswith("no worse within the seed spread")
    else:
        assert check.losses == [None, None]
        assert "not kept, the candidate's run with seed 1 " in check.reason


def test_a_check_that_could_not_run_is_recorded_not_kept_and_named_in_the_export_lines():
    recipe, larger = _trial(0, 8, 800.0, baseline=True), _trial(2, 64, 3000.0)
    budgets = Budgets(epochs=2.0, baseline_effective_batch=8, noise_scale=56.0)
    record = recipe_check.not_run(_setup(), larger, recipe, 0.03, budgets, "could not run: the time budget is spent")
    assert (record.kept, record.steps, record.losses) == (False, 0, [])
    assert record.samples_factor == pytest.approx((1 + 64 / 56) / (1 + 8 / 56))
    kept, lines = recipe_check.exportable(_candidates(recipe, larger), _setup(), [record])
    assert [c.number for c in kept] == [0]
    assert lines[1] == "recipe check: could not run: the time budget is spent"
