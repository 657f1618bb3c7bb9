"""select(): the preference, the baseline guarantee against measured noise, and the closest deadline miss."""

from __future__ import annotations

import math

import optuna
import pytest

from autotune.exceptions import NoFeasibleTrialError
from autotune.study._budget import Budgets
from autotune.study._selection import (
    MEMORY_PREFERENCE_TOLERANCE,
    NOISE_SIGMAS,
    PREFERENCES,
    Candidate,
    noise_margin,
    select,
)

MiB = 1024**2


def candidate(number, rate, *, spread=0.0, peak=None, baseline=False, **attrs) -> Candidate:
    return Candidate(
        number=number,
        attrs=dict(attrs),
        samples_per_second=rate,
        spread=spread,
        peak_memory_bytes=peak,
        is_baseline=baseline,
    )


def test_select_constants_are_as_documented():
    assert PREFERENCES == ("fastest", "balanced", "memory", "recipe")
    assert MEMORY_PREFERENCE_TOLERANCE == 0.05
    assert NOISE_SIGMAS == 2.0


def test_candidate_from_trial_reads_the_user_attributes():
    trial = optuna.trial.create_trial(
        value=123.5,
        user_attrs={"samples_per_second": 123.5, "throughput_cv": 0.03, "peak_memory_bytes": 5 * MiB, "baseline": True},
    )
    made = Candidate.from_trial(trial)
    assert made.number == trial.number
    assert made.samples_per_second == 123.5
    assert made.spread == 0.03
    assert made.peak_memory_bytes == 5 * MiB
    assert made.is_baseline is True
    assert made.attrs == trial.user_attrs


def test_candidate_from_trial_without_spread_or_baseline_mark():
    trial = optuna.trial.create_trial(value=10.0, user_attrs={"samples_per_second": 10, "throughput_cv": None})
    made = Candidate.from_trial(trial)
    assert made.spread == 0.0
    assert made.peak_memory_bytes is None
    assert made.is_baseline is False


def test_noise_margin_is_twice_the_combined_spread():
    assert noise_margin(candidate(1, 1.0, spread=0.03), candidate(2, 1.0, spread=0.04)) == pytest.approx(0.1)
    assert noise_margin(candidate(1, 1.0), candidate(2, 1.0)) == 0.0


def test_select_fastest_picks_the_highest_throughput():
    feasible = [candidate(1, 100.0), candidate(2, 200.0), candidate(3, 150.0)]
    selection = select(feasible, None, Budgets())
    assert selection.chosen.number == 2
    assert selection.fits_deadline is True
    assert selection.baseline is None
    assert selection.explanation[0] == "fastest: trial #2, the highest throughput (200.0 samples/s)"


def test_select_without_baseline_says_so():
    selection = select([candidate(1, 100.0), candidate(2, 200.0)], None, Budgets())
    assert selection.explanation == [
        "fastest: trial #2, the highest throughput (200.0 samples/s)",
        "the baseline has no feasible measurement to compare with",
    ]


def test_select_memory_picks_the_leanest_within_five_percent_of_the_fastest():
    feasible = [
        candidate(1, 200.0, peak=1000 * MiB),
        candidate(2, 192.0, peak=500 * MiB),  # 4% slower: in the pool
        candidate(3, 180.0, peak=100 * MiB),  # 10% slower: out
    ]
    selection = select(feasible, None, Budgets(), prefer="memory")
    assert selection.chosen.number == 2
    assert selection.explanation[0] == (
        "memory: trial #2 uses the least memory (500.0 MiB) among configs within 5% of the fastest"
    )


def test_select_memory_ignores_candidates_without_a_peak():
    feasible = [candidate(1, 200.0, peak=800 * MiB), candidate(2, 199.0, peak=None)]
    assert select(feasible, None, Budgets(), prefer="memory").chosen.number == 1


def test_select_memory_with_no_known_peak_falls_back_to_the_fastest():
    feasible = [candidate(1, 200.0), candidate(2, 199.0)]
    assert select(feasible, None, Budgets(), prefer="memory").chosen.number == 1


def test_select_balanced_picks_the_fastest_leaving_twice_the_headroom():
    budgets = Budgets(memory_budget_bytes=1000 * MiB, memory_headroom=0.1)  # twice the headroom: <= 800 MiB
    feasible = [
        candidate(1, 300.0, peak=850 * MiB),
        candidate(2, 250.0, peak=700 * MiB),
        candidate(3, 200.0, peak=100 * MiB),
    ]
    selection = select(feasible, None, budgets, prefer="balanced")
    assert selection.chosen.number == 2
    assert selection.explanation[0] == (
        "balanced: trial #2, the fastest whose peak (700.0 MiB) leaves twice the headroom (<= 800.0 MiB)"
    )


def test_select_balanced_peak_exactly_at_the_roomy_limit_qualifies():
    budgets = Budgets(memory_budget_bytes=1000 * MiB, memory_headroom=0.25)  # <= 500 MiB
    feasible = [candidate(1, 300.0, peak=600 * MiB), candidate(2, 250.0, peak=500 * MiB)]
    assert select(feasible, None, budgets, prefer="balanced").chosen.number == 2


def test_select_balanced_with_none_roomy_falls_back_to_the_fastest_and_says_why():
    budgets = Budgets(memory_budget_bytes=1000 * MiB, memory_headroom=0.1)
    feasible = [candidate(1, 300.0, peak=890 * MiB), candidate(2, 250.0, peak=850 * MiB), candidate(3, 200.0)]
    selection = select(feasible, None, budgets, prefer="balanced")
    assert selection.chosen.number == 1
    assert selection.explanation[0] == (
        "balanced: no config leaves twice the headroom (peak <= 800.0 MiB); trial #1, the fastest"
    )


def test_select_balanced_without_memory_budget_is_the_fastest():
    feasible = [candidate(1, 300.0, peak=890 * MiB), candidate(2, 250.0, peak=10 * MiB)]
    selection = select(feasible, None, Budgets(), prefer="balanced")
    assert selection.chosen.number == 1
    assert selection.explanation[0] == "balanced: no memory budget is set, so trial #1, the fastest"


def test_select_unknown_preference_is_an_error():
    with pytest.raises(ValueError, match="unknown preference 'cheapest'"):
        select([candidate(1, 1.0)], None, Budgets(), prefer="cheapest")  # type: ignore[arg-type]


def test_select_candidate_within_noise_of_baseline_exports_the_baseline():
    baseline = candidate(0, 100.0, spread=0.02, baseline=True)
    faster = candidate(1, 105.0, spread=0.02)  # +5.0%, noise margin 2 x hypot(2%, 2%) = 5.7%
    selection = select([baseline, faster], baseline, Budgets())
    assert selection.chosen is baseline
    assert selection.baseline is baseline
    assert selection.explanation == [
        "fastest: trial #1, the highest throughput (105.0 samples/s)",
        (
            "no faster config found: trial #1 is +5.0% against the baseline, within the measured noise (±5.7%); "
            "exporting the baseline (trial #0)"
        ),
    ]


def test_select_candidate_beyond_noise_beats_the_baseline():
    baseline = candidate(0, 100.0, spread=0.02, baseline=True)
    faster = candidate(1, 110.0, spread=0.02)
    selection = select([baseline, faster], baseline, Budgets())
    assert selection.chosen is faster
    assert selection.explanation[1] == "trial #1 beats the baseline by 10.0%, beyond the measured noise (±5.7%)"


@pytest.mark.parametrize(("spread", "rate", "baseline_wins"), [(0.02, 105.6, True), (0.02, 105.7, False)])
def test_select_guarantee_threshold_is_twice_the_combined_spread(spread, rate, baseline_wins):
    baseline = candidate(0, 100.0, spread=spread, baseline=True)
    other = candidate(1, rate, spread=spread)
    margin = 2 * math.hypot(spread, spread)  # 5.657%
    assert (rate / 100.0 - 1 <= margin) is baseline_wins
    selection = select([other, baseline], baseline, Budgets())
    assert (selection.chosen.number == 0) is baseline_wins


def test_select_equal_rates_without_noise_keep_the_baseline():
    baseline = candidate(0, 100.0, baseline=True)
    selection = select([candidate(1, 100.0), baseline], baseline, Budgets())
    # max() keeps the first of equal rates, trial #1; the guarantee then keeps the baseline
    assert selection.chosen is baseline
    assert selection.explanation[1].startswith("no faster config found: trial #1 is +0.0% against the baseline")


def test_select_any_gain_without_noise_beats_the_baseline():
    baseline = candidate(0, 100.0, baseline=True)
    selection = select([candidate(1, 100.5), baseline], baseline, Budgets())
    assert selection.chosen.number == 1
    assert selection.explanation[1] == "trial #1 beats the baseline by 0.5%, beyond the measured noise (±0.0%)"


def test_select_baseline_chosen_by_preference_adds_no_guarantee_line():
    baseline = candidate(0, 200.0, spread=0.01, baseline=True)
    selection = select([baseline, candidate(1, 100.0)], baseline, Budgets())
    assert selection.chosen is baseline
    assert selection.explanation == [
        "fastest: trial #0, the highest throughput (200.0 samples/s); it is the baseline: no config measured faster"
    ]


def test_select_guarantee_applies_after_the_memory_preference():
    baseline = candidate(0, 100.0, spread=0.01, peak=900 * MiB, baseline=True)
    lean = candidate(1, 101.0, spread=0.01, peak=100 * MiB)  # leanest, but only +1% against noise of 2.8%
    selection = select([baseline, lean], baseline, Budgets(), prefer="memory")
    assert selection.chosen is baseline
    assert selection.explanation[0].startswith("memory: trial #1 uses the least memory (100.0 MiB)")
    assert selection.explanation[1].startswith("no faster config found: trial #1 is +1.0% against the baseline")


def test_select_nothing_feasible_returns_the_closest_deadline_miss():
    misses = [
        candidate(3, 50.0, projected_full_run_seconds=500.0),
        candidate(4, 80.0, projected_full_run_seconds=80.0),
        candidate(5, 90.0),  # no projection: cannot be compared
    ]
    selection = select([], None, Budgets(deadline_seconds=60), deadline_misses=misses, study_name="tiny")
    assert selection.chosen.number == 4
    assert selection.fits_deadline is False
    assert selection.baseline is None
    assert selection.explanation == [
        "no config fits 60.0s (the deadline 60.0s): the closest, trial #4, projects 80.0s, 20.0s over; exporting it"
    ]


def test_select_closest_miss_counts_the_safety_margin():
    misses = [candidate(7, 1.0, projected_full_run_seconds=80.0)]
    budgets = Budgets(deadline_seconds=60, safety_margin_seconds=10)
    selection = select([], None, budgets, deadline_misses=misses)
    assert selection.explanation == [
        (
            "no config fits 50.0s (the deadline 60.0s less the 10.0s margin): the closest, trial #7, "
            "projects 80.0s, 30.0s over; exporting it"
        )
    ]


def test_select_feasible_candidates_win_over_deadline_misses():
    misses = [candidate(9, 1000.0, projected_full_run_seconds=1.0)]
    selection = select([candidate(1, 10.0)], None, Budgets(deadline_seconds=60), deadline_misses=misses)
    assert selection.chosen.number == 1
    assert selection.fits_deadline is True


def test_select_nothing_at_all_raises_no_feasible_trial():
    with pytest.raises(NoFeasibleTrialError) as caught:
        select([], None, Budgets(), study_name="tiny")
    assert str(caught.value) == "study 'tiny' has no feasible trial to export"


def test_select_misses_without_projection_raise_no_feasible_trial():
    with pytest.raises(NoFeasibleTrialError, match=r"^study 'tiny' has no feasible trial to export$"):
        select([], None, Budgets(deadline_seconds=60), deadline_misses=[candidate(1, 5.0)], study_name="tiny")


def test_select_misses_without_a_deadline_raise_no_feasible_trial():
    misses = [candidate(1, 5.0, projected_full_run_seconds=100.0)]
    with pytest.raises(NoFeasibleTrialError):
        select([], None, Budgets(), deadline_misses=misses, study_name="tiny")


def _timed(number, rate, warmup, compile_seconds=0.0, baseline=False) -> Candidate:
    return candidate(
        number,
        rate,
        spread=0.01,
        baseline=baseline,
        dataset_size=6000,
        warmup_seconds=warmup,
        compile_seconds=compile_seconds,
        config={
            "batch_size": 32,
            "accumulation_steps": 1,
            "compile": "default" if compile_seconds else "off",
            "max_lr": 10.0 ** -(number + 1),
        },
    )  # each trial its own config


@pytest.mark.parametrize(("epochs", "winner"), [(1, 1), (100, 2)])
def test_select_by_run_time_exports_compile_only_where_it_pays(epochs, winner):
    # Trial 2 compiles: 20% more steady throughput for 52 s of compile. On a one-minute run that
    # loses; on a hundred epochs it wins.
    baseline = _timed(0, 100.0, 2.0, baseline=True)
    eager, compiled = _timed(1, 120.0, 2.0), _timed(2, 144.0, 54.0, compile_seconds=52.0)
    selection = select([baseline, eager, compiled], baseline, Budgets(epochs=epochs), objective="time")
    assert selection.chosen.number == winner
    if winner == 1:
        assert selection.explanation[:2] == [
            "fastest: trial #1, the shortest projected full run (52.0s at 120.0 samples/s)",
            "trial #2 has the highest steady throughput (144.0 samples/s, +20%), but with its compile 52.0s "
            "the full run projects 1.6m against 52.0s",
        ]
    else:
        assert (
            selection.explanation[0] == "fastest: trial #2, the shortest projected full run (70.3m at 144.0 samples/s)"
        )


def test_select_by_throughput_ignores_compile_time():
    baseline = _timed(0, 100.0, 2.0, baseline=True)
    eager, compiled = _timed(1, 120.0, 2.0), _timed(2, 144.0, 54.0, compile_seconds=52.0)
    selection = select([baseline, eager, compiled], baseline, Budgets(epochs=1), objective="throughput")
    assert selection.chosen.number == 2


def _figure(rate: float, spread: float, window_spread: float) -> Candidate:
    return Candidate(
        number=0, attrs={}, samples_per_second=rate, spread=spread, peak_memory_bytes=None, window_spread=window_spread
    )


@pytest.mark.parametrize(
    ("winner", "baseline", "settled"),
    [
        # Noise 2 x hypot(3%, 3%) = 8.5%: within the 10% target.
        ((150, 0.03, 0.02), (100, 0.03, 0.02), True),
        # Rounds disagree (10% each) but the windows are steady: more rounds can lower the noise.
        ((150, 0.10, 0.02), (100, 0.10, 0.02), False),
        ((105, 0.10, 0.02), (100, 0.10, 0.02), False),
        # Steps vary (windows 10%: a floor of 28%): a 5% gain cannot be told from noise, however many rounds.
        ((105, 0.12, 0.10), (100, 0.12, 0.10), True),
        # ... a 50% gain already beats the noise (34%): more rounds would not change the verdict.
        ((150, 0.12, 0.10), (100, 0.12, 0.10), True),
        # ... a 30% gain is above the floor (28%) but within the noise (34%): more rounds may confirm it.
        ((130, 0.12, 0.10), (100, 0.12, 0.10), False),
    ],
)
def test_paired_settled_goes_on_only_while_more_rounds_can_change_the_verdict(winner, baseline, settled):
    from autotune.study._paired import paired_settled

    assert paired_settled([_figure(*winner), _figure(*baseline)]) is settled


def test_paired_settled_needs_both_figures():
    from autotune.study._paired import paired_settled

    assert paired_settled([_figure(150, 0.01, 0.01)]) is False


def test_a_trial_of_the_baselines_own_config_is_no_speedup_however_it_measured():
    config = {"batch_size": 16, "precision": "fp32"}
    base = candidate(0, 1000.0, spread=0.01, baseline=True, config=config)
    again = candidate(8, 1300.0, spread=0.01, config=dict(config))  # measured 30% faster by chance
    other = candidate(3, 1100.0, spread=0.01, config={"batch_size": 32, "precision": "fp32"})
    selection = select([base, again, other], base, Budgets())
    # The duplicate is dropped, so the genuine second-best is judged against the baseline.
    assert selection.chosen is other
    assert selection.explanation == [
        "trial #8 ran the baseline's own config (a sampler may propose it again): a measurement of the "
        "baseline, not a candidate",
        "fastest: trial #3, the highest throughput (1100.0 samples/s)",
        "trial #3 beats the baseline by 10.0%, beyond the measured noise (±2.8%)",
    ]
    # Without a faster config, the baseline is exported.
    assert select([base, again], base, Budgets()).chosen is base


def test_paired_settled_judges_the_winner_by_the_studys_objective():
    import dataclasses

    from autotune.study._paired import paired_settled

    baseline = dataclasses.replace(_timed(0, 100.0, 2.0, baseline=True), spread=0.02, window_spread=0.01)
    # Trial 1 reads twice as fast but noisily, and its compile makes the one-epoch run the longest;
    # trial 2 is the shorter run, measured tightly.
    compiled = dataclasses.replace(_timed(1, 200.0, 1002.0, compile_seconds=1000.0), spread=0.20, window_spread=0.01)
    eager = dataclasses.replace(_timed(2, 120.0, 2.0), spread=0.01, window_spread=0.01)
    figures = [compiled, eager, baseline]
    assert paired_settled(figures) is False  # by throughput: trial 1, within ±40% of noise
    assert paired_settled(figures, Budgets(epochs=1), "time") is True  # by run time: trial 2, ±4.5%
