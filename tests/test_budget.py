"""Budgets: the memory limit with headroom, the full run's time window, projections, trial timeouts."""

from __future__ import annotations

import json

import pytest

from autotune.exceptions import ParameterError, UsageError
from autotune.study._budget import (
    DEFAULT_TRIAL_TIMEOUT_SECONDS,
    MIN_TRIAL_TIMEOUT_SECONDS,
    Budgets,
    derive_trial_timeout,
)

MiB = 1024**2
GiB = 1024**3


def test_budgets_memory_limit_is_the_budget_less_the_headroom():
    assert Budgets(memory_budget_bytes=GiB, memory_headroom=0.25).memory_limit_bytes == 768 * MiB
    assert Budgets(memory_budget_bytes=600 * MiB, memory_headroom=0.1).memory_limit_bytes == int(600 * MiB * 0.9)
    assert Budgets(memory_budget_bytes=600 * MiB, memory_headroom=0.0).memory_limit_bytes == 600 * MiB


def test_budgets_memory_limit_is_an_int():
    assert isinstance(Budgets(memory_budget_bytes=1000, memory_headroom=0.3).memory_limit_bytes, int)


def test_budgets_memory_limit_without_a_budget_is_none():
    assert Budgets().memory_limit_bytes is None
    assert Budgets(memory_headroom=0.5).memory_limit_bytes is None


def test_budgets_default_headroom_is_ten_percent():
    assert Budgets().memory_headroom == 0.10
    assert Budgets(memory_budget_bytes=1000 * MiB).memory_limit_bytes == int(1000 * MiB * 0.9)


def test_budgets_describe_memory_limit_names_budget_and_headroom():
    budgets = Budgets(memory_budget_bytes=600 * MiB, memory_headroom=0.1)
    assert budgets.describe_memory_limit() == "540.0 MiB (the budget 600.0 MiB less 10% headroom)"


def test_budgets_time_limit_is_the_deadline_less_the_margin():
    assert Budgets(deadline_seconds=3600, safety_margin_seconds=600).time_limit_seconds == 3000
    assert Budgets(deadline_seconds=3600).time_limit_seconds == 3600


def test_budgets_time_limit_without_a_deadline_is_none():
    assert Budgets().time_limit_seconds is None
    assert Budgets(safety_margin_seconds=60).time_limit_seconds is None


def test_budgets_describe_time_limit_with_and_without_margin():
    assert Budgets(deadline_seconds=12 * 3600, safety_margin_seconds=1800).describe_time_limit() == (
        "11.5h (the deadline 12.0h less the 30.0m margin)"
    )
    assert Budgets(deadline_seconds=12 * 3600).describe_time_limit() == "12.0h (the deadline 12.0h)"


def test_budgets_project_is_samples_over_rate_plus_warmup():
    budgets = Budgets(epochs=2)
    attrs = {"dataset_size": 512, "samples_per_second": 256.0, "warmup_seconds": 1.5}
    assert budgets.project(attrs) == pytest.approx(512 * 2 / 256 + 1.5)


def test_budgets_project_with_a_given_rate_overrides_the_trials():
    budgets = Budgets(epochs=2)
    attrs = {"dataset_size": 512, "samples_per_second": 256.0, "warmup_seconds": 1.5}
    assert budgets.project(attrs, samples_per_second=512.0) == pytest.approx(2 + 1.5)


def test_budgets_project_without_warmup_counts_none():
    assert Budgets(epochs=1.5).project({"dataset_size": 1000, "samples_per_second": 100.0}) == pytest.approx(15.0)
    assert Budgets().project({"dataset_size": 1000, "samples_per_second": 100.0, "warmup_seconds": None}) == (
        pytest.approx(10.0)
    )


def test_budgets_project_scales_with_fractional_epochs():
    attrs = {"dataset_size": 1000, "samples_per_second": 100.0, "warmup_seconds": 0.0}
    assert Budgets(epochs=0.5).project(attrs) == pytest.approx(5.0)


@pytest.mark.parametrize(
    "attrs",
    [
        {"samples_per_second": 100.0, "warmup_seconds": 1.0},
        {"dataset_size": None, "samples_per_second": 100.0},
        {"dataset_size": 0, "samples_per_second": 100.0},
        {"dataset_size": 512, "warmup_seconds": 1.0},
        {"dataset_size": 512, "samples_per_second": None},
        {"dataset_size": 512, "samples_per_second": 0.0},
    ],
)
def test_budgets_project_without_dataset_size_or_rate_is_none(attrs):
    assert Budgets().project(attrs) is None


def test_budgets_headroom_of_one_is_refused():
    with pytest.raises(UsageError) as caught:
        Budgets(memory_headroom=1.0)
    assert str(caught.value) == "memory_headroom must be in [0, 1), got 1.0"


def test_budgets_negative_headroom_is_refused():
    with pytest.raises(UsageError) as caught:
        Budgets(memory_headroom=-0.1)
    assert str(caught.value) == "memory_headroom must be in [0, 1), got -0.1"


@pytest.mark.parametrize("epochs", [0, -1.0, float("inf"), float("nan")])
def test_budgets_epochs_not_a_finite_positive_number_is_refused(epochs):
    with pytest.raises(UsageError) as caught:
        Budgets(epochs=epochs)
    assert str(caught.value) == f"epochs must be a finite number > 0, got {epochs!r}"


def test_budgets_margin_equal_to_deadline_is_refused():
    with pytest.raises(UsageError) as caught:
        Budgets(deadline_seconds=60, safety_margin_seconds=60)
    assert str(caught.value) == "safety_margin_seconds (60.0s) must be shorter than deadline_seconds (60.0s)"


def test_budgets_margin_longer_than_deadline_is_refused():
    with pytest.raises(UsageError) as caught:
        Budgets(deadline_seconds=3600, safety_margin_seconds=7200)
    assert str(caught.value) == "safety_margin_seconds (2.0h) must be shorter than deadline_seconds (60.0m)"


def test_budgets_margin_without_deadline_is_accepted():
    assert Budgets(safety_margin_seconds=7200).safety_margin_seconds == 7200


def test_budgets_json_round_trip():
    budgets = Budgets(
        memory_budget_bytes=24 * GiB,
        memory_headroom=0.2,
        epochs=3.5,
        deadline_seconds=43200,
        safety_margin_seconds=1800,
        baseline_effective_batch=12,
    )
    data = budgets.to_json()
    assert data == {
        "memory_budget_bytes": 24 * GiB,
        "memory_headroom": 0.2,
        "epochs": 3.5,
        "deadline_seconds": 43200,
        "safety_margin_seconds": 1800,
        "steps": None,
        "evaluations": 0.0,
        "baseline_effective_batch": 12,
    }
    assert Budgets.from_json(json.loads(json.dumps(data))) == budgets


def test_budgets_noise_scale_is_read_from_the_trials_not_stored():
    budgets = Budgets(baseline_effective_batch=12).with_noise_scale(
        [{"noise": {"gradient_sq": [1.0, 3.0], "trace": [100.0, 300.0]}}]
    )
    assert budgets.noise_scale == pytest.approx(100.0)
    assert "noise_scale" not in budgets.to_json()
    assert Budgets(baseline_effective_batch=12).with_noise_scale([{"config": {}}]).noise_scale is None


def _at(batch: int, rate: float = 1000.0) -> dict:
    return {"dataset_size": 24000, "samples_per_second": rate, "config": {"batch_size": batch, "accumulation_steps": 1}}


def test_projection_at_the_recipes_effective_batch_takes_its_samples():
    parts = Budgets(epochs=1.0, baseline_effective_batch=12, noise_scale=100.0).projection(_at(12))
    assert parts["samples"] == 24000
    assert parts["progress_factor"] == 1.0
    assert parts["optimizer_steps"] == 2000


def test_projection_at_a_larger_batch_takes_the_samples_to_the_recipes_progress():
    # B_noise 120: batch 240 needs (1 + 2) / (1 + 0.1) of the recipe's samples to reach its progress.
    budgets = Budgets(epochs=1.0, baseline_effective_batch=12, noise_scale=120.0)
    parts = budgets.projection(_at(240, rate=3000.0))
    assert parts["progress_factor"] == pytest.approx(3 / 1.1)
    assert parts["samples"] == pytest.approx(24000 * 3 / 1.1)
    assert parts["steady_seconds"] == pytest.approx(24000 * 3 / 1.1 / 3000.0)
    assert parts["optimizer_steps"] == pytest.approx(24000 * 3 / 1.1 / 240)
    assert (
        "x 2.73 to the recipe's progress (effective batch 240, not 12; gradient noise scale 120)"
        in parts["includes"][0]
    )


def test_projection_faster_per_sample_can_be_slower_to_the_same_progress():
    # 3x the throughput at batch 240, but below the noise scale each sample buys far less progress.
    budgets = Budgets(epochs=1.0, baseline_effective_batch=12, noise_scale=20.0)
    assert budgets.project(_at(240, rate=3000.0)) > budgets.project(_at(12, rate=1000.0))
    # Without a measured noise scale, a larger batch is charged as many steps as the recipe makes.
    unknown = Budgets(epochs=1.0, baseline_effective_batch=12).projection(_at(240, rate=3000.0))
    assert unknown["progress_factor"] == 20.0
    assert "no gradient noise scale measured" in unknown["includes"][0]


def test_projection_in_steps_counts_the_recipes_samples_per_step():
    budgets = Budgets(steps=100, baseline_effective_batch=12, noise_scale=1e9)
    assert budgets.projection(_at(48))["samples"] == pytest.approx(1200, rel=1e-6)
    assert budgets.projection(_at(48))["optimizer_steps"] == pytest.approx(25, rel=1e-6)


def test_projection_says_what_the_full_run_includes():
    attrs = {
        "dataset_size": 1000,
        "warmup_seconds": 30.0,
        "compile_seconds": 25.0,
        "evaluation_seconds": 2.0,
        "config": {"batch_size": 10, "accumulation_steps": 2},
    }
    parts = Budgets(epochs=3, evaluations=3).projection(attrs, 100.0)
    assert parts["seconds"] == pytest.approx(30 + 30 + 6)
    assert parts["includes"] == [
        "3 epochs x 1000 samples at 100.0 samples/s: 30.0s",
        "warm-up 30.0s (of which compile 25.0s)",
        "3 evaluations: 6.0s",
    ]
    by_steps = Budgets(steps=50).projection(attrs, 100.0)
    assert by_steps["steady_seconds"] == pytest.approx(50 * 20 / 100)
    assert by_steps["includes"][0] == "50 steps x 20 samples at 100.0 samples/s: 10.0s"


def test_compile_pays_off_only_on_a_long_enough_run():
    eager = {"dataset_size": 1000, "warmup_seconds": 2.0}
    compiled = {"dataset_size": 1000, "warmup_seconds": 50.0, "compile_seconds": 48.0}
    short, long = Budgets(epochs=1), Budgets(epochs=100)
    assert short.project(compiled, 150.0) > short.project(eager, 100.0)  # 56.7s against 12s
    assert long.project(compiled, 150.0) < long.project(eager, 100.0)  # 716.7s against 1002s


def test_budgets_steps_must_be_a_positive_integer():
    with pytest.raises(ParameterError, match="steps must be an integer >= 1, got 0"):
        Budgets(steps=0)


def test_budgets_from_json_none_or_empty_is_the_defaults():
    assert Budgets.from_json(None) == Budgets()
    assert Budgets.from_json({}) == Budgets()


def test_budgets_from_json_validates():
    with pytest.raises(UsageError, match=r"^epochs must be a finite number > 0, got 0$"):
        Budgets.from_json({"epochs": 0})


def test_derive_trial_timeout_without_a_search_timeout_is_ten_minutes():
    assert DEFAULT_TRIAL_TIMEOUT_SECONDS == 600
    assert derive_trial_timeout(None, 20) == 600
    assert derive_trial_timeout(None, None) == 600


def test_derive_trial_timeout_small_share_is_floored_at_thirty_seconds():
    assert MIN_TRIAL_TIMEOUT_SECONDS == 30
    assert derive_trial_timeout(120, 20) == 30  # 3 x 6 s share, floored


def test_derive_trial_timeout_is_three_shares_but_at_most_three_tenths_of_the_budget():
    assert derive_trial_timeout(3600, 40) == 270
    assert derive_trial_timeout(3600, 4) == 1080  # three shares would be 2700: one trial would take most of it


def test_derive_trial_timeout_without_trial_count_assumes_four():
    assert derive_trial_timeout(3600, None) == 1080
    assert derive_trial_timeout(300, None) == 90  # a five-minute search: no trial takes a third of it


@pytest.mark.parametrize(
    ("timeout", "n_trials", "expected"),
    [(10, 1, 10), (20, 100, 6), (60, 1, 60), (3600, 1, 3600), (3600, 2, 3600)],
)
def test_derive_trial_timeout_never_above_the_search_timeout(timeout, n_trials, expected):
    assert derive_trial_timeout(timeout, n_trials) == expected
    assert derive_trial_timeout(timeout, n_trials) <= timeout
