"""autotune.study._paired: the side-by-side re-measurement at the end of a search: the winner and the
baseline in interleaved rounds of fresh processes until the speedup's noise settles, challengers measured
once re-measured in turn (up to a cap), figures of different rounds compared as speedups over their own
round's baseline. Every figure here is set (conftest's set_figures, or verify answered from set rounds)."""

from __future__ import annotations

import re

import optuna
import pytest
from conftest import recipe_checks_keep, study_with_rates, workload_spec
from optuna.trial import TrialState

from autotune.knobs._config import TrainConfig
from autotune.store import _records
from autotune.study._loop import search
from autotune.study._options import SearchOptions
from autotune.study._paired import PAIRED_MAX_ROUNDS, PAIRED_ROUNDS, remeasure_best


def _load(name: str, storage: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


_recorded = study_with_rates  # a study whose trials measured set rates once (#0 the baseline)


def test_search_remeasures_the_winner_and_the_baseline_side_by_side(storage_url, space_file, fast_measure, set_figures):
    from autotune.export._export import export_best

    # Set figures, not this machine's speed: batch 256 reads 5x the baseline's batch 8, in the trials and
    # side by side; the recipe check of its changed batch keeps it.
    set_figures(lambda job: {8: 1000.0, 256: 5000.0}[job.config["batch_size"]])
    space = space_file("effective_batch: free\nknobs: {batch_size: [256]}\n")
    # Ranked by throughput: tiny's full run is a fraction of a second, so by projected time the two
    # configs differ by less than the noise of their warm-ups, and the baseline is kept.
    with recipe_checks_keep():
        result = search(
            SearchOptions(
                workload=workload_spec(),
                storage=storage_url,
                space=space,
                n_trials=2,
                measure=fast_measure,
                lr_find=False,
                slow_fraction=0.0,
                objective="throughput",
            )
        )
    study = _load("tiny", storage_url)
    paired = study.user_attrs["paired"]
    assert result.paired == paired
    assert (paired["trial"], paired["baseline_trial"]) == (1, 0)
    assert [row["trial"] for row in paired["rounds"]] == [1, 0]
    # At least PAIRED_ROUNDS; more only while the speedup's noise is above PAIRED_NOISE and more
    # rounds could still change the verdict.
    from autotune.study._paired import PAIRED_MAX_ROUNDS, PAIRED_ROUNDS, paired_settled
    from autotune.study._selection import Candidate

    rounds = len(paired["rounds"][0]["samples_per_second"])
    assert len(paired["rounds"][1]["samples_per_second"]) == rounds
    assert PAIRED_ROUNDS <= rounds <= PAIRED_MAX_ROUNDS
    figures = [
        Candidate(
            number=n,
            attrs={},
            samples_per_second=paired[prefix + "samples_per_second"],
            spread=paired[prefix + "spread"],
            peak_memory_bytes=None,
            window_spread=paired[prefix + "window_spread"],
        )
        for n, prefix in ((1, ""), (0, "baseline_"))
    ]
    assert rounds == PAIRED_MAX_ROUNDS or paired_settled(figures)
    assert paired["speedup"] == pytest.approx(paired["samples_per_second"] / paired["baseline_samples_per_second"])
    assert study.user_attrs["search_seconds"] == pytest.approx(result.seconds)
    export = export_best("tiny", storage_url)
    assert export.document["measured"]["samples_per_second"] == paired["samples_per_second"]
    assert export.document["payoff"]["search_seconds"] >= result.seconds
    if export.document["provenance"]["trial"] == 1:
        assert (
            f"measured side by side at the end of the search ({rounds} interleaved rounds in fresh processes): "
            f"trial #1 {paired['speedup']:.2f}x the baseline (#0), ±{paired['noise']:.1%} noise" in export.explanation
        )


def test_paired_remeasurement_is_skipped_when_the_time_budget_is_spent(finished_study):
    import time

    from autotune.study._paired import remeasure_best

    storage_url, name = finished_study
    study = optuna.load_study(study_name=name, storage=storage_url)
    best, baseline = study.trials[1], study.trials[0]
    paired, notes = remeasure_best(study, best, baseline, SearchOptions(), deadline=time.monotonic() + 1)
    assert paired is None
    assert notes == [
        "the winner and the baseline were not re-measured side by side: the time budget is spent "
        "(export-best --verify 1 does it)"
    ]


def test_a_single_figure_beyond_the_re_measured_winner_is_re_measured_beside_it(
    storage_url, space_file, fast_measure, set_figures
):
    """The search and the export name the same trial: one that export-best would take over the
    re-measured winner on a lone figure is re-measured beside the winner and the baseline first."""
    from autotune.export._export import export_best
    from autotune.study._paired import remeasure_best

    # Set figures: batch 256 reads 1500 samples/s, the baseline's batch 8 1000, batch 64 1400, every time.
    set_figures(lambda job: {8: 1000.0, 64: 1400.0, 256: 1500.0}[job.config["batch_size"]])
    with recipe_checks_keep():
        search(
            SearchOptions(
                workload=workload_spec(),
                storage=storage_url,
                space=space_file("effective_batch: free\nknobs: {batch_size: [256]}\n"),
                n_trials=2,
                measure=fast_measure,
                lr_find=False,
                slow_fraction=0.0,
                objective="throughput",
            )
        )
    study = _load("tiny", storage_url)
    baseline, winner = study.trials[0], study.trials[1]
    # Trial #2 read 50x too high once (a lucky window): far beyond any noise.
    lucky = dict(winner.user_attrs, config=TrainConfig(batch_size=64).to_dict())
    for key in ("samples_per_second", "unit_per_second"):
        if lucky.get(key):
            lucky[key] *= 50
    study.add_trial(
        optuna.trial.create_trial(state=TrialState.COMPLETE, value=lucky["samples_per_second"], user_attrs=lucky)
    )
    _kept_recipe_checks(study, 1, 2)  # both change the recipe's batch: candidates once a recipe check keeps them
    paired, notes = remeasure_best(study, winner, baseline, SearchOptions(), deadline=None)

    assert [row["trial"] for row in paired["rounds"]] == [2, 1, 0]  # side by side, the challenger first
    assert paired["challengers"] == [2]
    assert {row["trial"] for row in paired["figures"]} == {0, 1, 2}
    assert paired["trial"] in (1, 2) and paired["baseline_trial"] == 0
    again = next(row for row in paired["figures"] if row["trial"] == 2)["samples_per_second"]
    assert again < lucky["samples_per_second"] / 5  # its own figure now, not the lucky one
    assert len(notes) == 1 and re.fullmatch(
        rf"trial #2 measured {_records.rate(study.trials[2]):.1f} samples/s once, beyond the noise of trial #1's "
        r"[0-9.]+ side by side: re-measured beside the two",
        notes[0],
    ), notes
    export = export_best("tiny", storage_url)
    exported = export.document["provenance"]["trial"]
    assert exported in (paired["trial"], 0)  # never #2 on its lone figure
    figures = {row["trial"]: row["samples_per_second"] for row in paired["figures"]}
    assert export.document["measured"]["samples_per_second"] == figures[exported]
    assert any(
        line.startswith("measured faster than the search's first pick once") and "trial #2" in line
        for line in export.explanation
    )


def _fake_verify(monkeypatch, calls: list[list[int]], *rounds: dict[int, float]):
    """``autotune.study._verify.verify`` answering each call with the next figures (spread 1%); the trials
    each call re-measured, in order, go into ``calls``."""
    import dataclasses

    from autotune.study import _verify as verify_module

    answers = iter(rounds)

    def fake(candidates, setup, **_kwargs):
        figures = next(answers)
        calls.append([c.number for c in candidates])
        measured = [
            dataclasses.replace(c, samples_per_second=figures[c.number], spread=0.01, window_spread=0.01)
            for c in candidates
        ]
        table = [{"trial": c.number, "samples_per_second": [figures[c.number]] * 2} for c in candidates]
        return verify_module.Verification(candidates=measured, rounds=table, seconds=1.0)

    monkeypatch.setattr(verify_module, "verify", fake)


def test_each_challenger_is_re_measured_beside_the_current_winner_and_the_baseline(storage_url, monkeypatch):
    from autotune.study._paired import remeasure_best

    # Measured once: #3 and #2 far above the rest.
    study = _recorded(storage_url, {0: 1000.0, 1: 1200.0, 2: 2000.0, 3: 3000.0})
    calls: list[list[int]] = []
    _fake_verify(
        monkeypatch,
        calls,
        {1: 1200.0, 0: 1000.0},  # #3's lone 3000 is beyond #1's noise: re-measure it
        {3: 1300.0, 1: 1250.0, 0: 1000.0},  # #3 wins side by side; #2's lone 2000 is next
        {2: 1280.0, 3: 1310.0, 0: 1000.0},
    )  # #3 stays ahead: settled
    paired, notes = remeasure_best(study, study.trials[1], study.trials[0], SearchOptions(), deadline=None)
    assert calls == [[1, 0], [3, 1, 0], [2, 3, 0]]
    assert (paired["trial"], paired["samples_per_second"], paired["challengers"]) == (3, 1310.0, [3, 2])
    assert {row["trial"]: row["samples_per_second"] for row in paired["figures"]} == {
        0: 1000.0,
        1: 1250.0,
        2: 1280.0,
        3: 1310.0,
    }
    assert notes == [
        "trial #3 measured 3000.0 samples/s once, beyond the noise of trial #1's 1200.0 side by side: "
        "re-measured beside the two",
        "trial #2 measured 2000.0 samples/s once, beyond the noise of trial #3's 1300.0 side by side: "
        "re-measured beside the two",
    ]
    assert study.user_attrs["paired"] == paired


def test_when_nothing_beats_the_baseline_side_by_side_the_next_faster_trial_is_re_measured(storage_url, monkeypatch):
    from autotune.export._export import export_best
    from autotune.study._paired import remeasure_best
    from autotune.study._selection import paired_lines

    # #1 read fastest once; #2 read 2% above the baseline once, within the noise (a slow process
    # may have read it low).
    study = _recorded(storage_url, {0: 1000.0, 1: 1300.0, 2: 1020.0, 3: 900.0})
    calls: list[list[int]] = []
    _fake_verify(
        monkeypatch,
        calls,
        {1: 1010.0, 0: 1000.0},  # #1 is no faster side by side
        {2: 1200.0, 0: 1000.0},
    )  # #2 is, beyond the noise: settled
    paired, notes = remeasure_best(study, study.trials[1], study.trials[0], SearchOptions(), deadline=None)
    assert calls == [[1, 0], [2, 0]]  # #3 read below the baseline: never re-measured
    assert (paired["trial"], paired["speedup"], paired["runners_up"]) == (2, 1.2, [2])
    assert {row["trial"]: row["samples_per_second"] for row in paired["figures"]} == {0: 1000.0, 1: 1010.0, 2: 1200.0}
    assert notes == [
        "trial #1 was no faster than the baseline side by side; trial #2, 1020.0 samples/s once against "
        "the baseline's 1000.0, is next: re-measured beside the baseline"
    ]
    assert paired_lines(paired)[-1] == (
        "re-measured next, as the trials before them were no faster than the baseline "
        "side by side: trial #2 (1200.0 samples/s)"
    )
    assert export_best("challenged", storage_url).document["provenance"]["trial"] == 2


def test_figures_from_different_rounds_compare_as_speedups_over_their_rounds_baseline(storage_url, monkeypatch):
    from autotune.study._paired import remeasure_best
    from autotune.study._selection import Candidate, with_paired

    study = _recorded(storage_url, {0: 1300.0, 1: 1700.0, 2: 1450.0})
    calls: list[list[int]] = []
    _fake_verify(
        monkeypatch,
        calls,
        {1: 1605.0, 0: 1600.0},  # a fast spell of the machine: #1 1.00x
        {2: 1394.0, 0: 1160.0},
    )  # a slow one: #2 1.20x, below #1's raw figure
    paired, notes = remeasure_best(study, study.trials[1], study.trials[0], SearchOptions(), deadline=None)
    assert calls == [[1, 0], [2, 0]]  # #1's 1605 is not taken for faster than #2's 1394: no third round
    assert paired["trial"] == 2 and len(notes) == 1
    pool = {
        c.number: c.samples_per_second for c in with_paired([Candidate.from_trial(t) for t in study.trials], paired)
    }
    assert pool == pytest.approx({0: 1160.0, 1: 1605.0 * 1160.0 / 1600.0, 2: 1394.0})


def test_no_trial_is_re_measured_next_when_none_read_faster_than_the_baseline(storage_url, monkeypatch):
    from autotune.study._paired import remeasure_best

    study = _recorded(storage_url, {0: 1000.0, 1: 1300.0, 2: 950.0})
    calls: list[list[int]] = []
    _fake_verify(monkeypatch, calls, {1: 1005.0, 0: 1000.0})
    paired, notes = remeasure_best(study, study.trials[1], study.trials[0], SearchOptions(), deadline=None)
    assert (calls, notes, paired["trial"]) == ([[1, 0]], [], 1)
    assert "runners_up" not in paired


def test_challengers_stop_at_the_cap_and_an_earlier_figure_counts_as_measured_once_more(storage_url, monkeypatch):
    from autotune.study._paired import PAIRED_CHALLENGERS, remeasure_best

    study = _recorded(storage_url, {0: 1000.0, 1: 1200.0, 2: 2000.0, 3: 3000.0})
    calls: list[list[int]] = []
    _fake_verify(
        monkeypatch, calls, {1: 1200.0, 0: 1000.0}, {3: 1300.0, 1: 1250.0, 0: 1000.0}, {2: 900.0, 3: 950.0, 0: 800.0}
    )  # the machine slowed: #3 reads 1.19x, #1 read 1.25x before
    paired, notes = remeasure_best(study, study.trials[1], study.trials[0], SearchOptions(), deadline=None)
    assert len(calls) == 1 + PAIRED_CHALLENGERS == 3  # #1 would be next, but the cap is reached
    assert paired["trial"] == 3 and paired["challengers"] == [3, 2]
    assert notes[2] == (
        "trial #1 measured 1.25x the baseline in an earlier re-measurement, beyond the noise of trial "
        "#3's 1.19x side by side; not re-measured, as 2 challengers were already (export-best "
        "--verify 3 re-measures the top 3)"
    )


def _kept_recipe_checks(study: optuna.Study, *numbers: int) -> None:
    """Record a kept recipe check for each trial (as if the search had run one)."""
    from autotune.study import _recipe_check as recipe_check

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for number in numbers:
        config = trials[number].user_attrs["config"]
        recipe_check.store(
            study,
            recipe_check.RecipeCheck(
                trial=number,
                config=config,
                recipe_config=trials[0].user_attrs["config"],
                effective_batch=0,
                recipe_effective_batch=8,
                noise_scale=None,
                samples_factor=1.0,
                steps=1,
                recipe_steps=1,
                seeds=[1],
                losses=[1.0],
                recipe_losses=[1.0],
                kept=True,
                reason="kept",
                seconds=0.0,
            ),
        )


def test_nothing_is_re_measured_without_a_winner_other_than_a_baseline_that_ran_fine(storage_url):
    study = study_with_rates(storage_url, {0: 1000.0, 1: 1300.0})
    baseline, best = study.trials[0], study.trials[1]
    assert remeasure_best(study, None, baseline, SearchOptions(), deadline=None) == (None, [])
    assert remeasure_best(study, baseline, baseline, SearchOptions(), deadline=None) == (None, [])
    assert remeasure_best(study, best, None, SearchOptions(), deadline=None) == (None, [])
    study.add_trial(optuna.trial.create_trial(state=TrialState.PRUNED, user_attrs={"baseline": True, "status": "oom"}))
    assert remeasure_best(study, best, study.trials[2], SearchOptions(), deadline=None) == (None, [])
    assert "paired" not in study.user_attrs


def test_a_re_measurement_that_does_not_finish_stores_nothing(storage_url, monkeypatch):
    from autotune.study import _verify as verify_module

    study = study_with_rates(storage_url, {0: 1000.0, 1: 1300.0})

    def unfinished(candidates, setup, **_kwargs):  # the baseline's every round failed
        return verify_module.Verification(candidates=list(candidates[:1]), rounds=[], seconds=1.0)

    monkeypatch.setattr(verify_module, "verify", unfinished)
    paired, notes = remeasure_best(study, study.trials[1], study.trials[0], SearchOptions(), deadline=None)
    assert paired is None
    assert notes == ["the side-by-side re-measurement of the winner and the baseline did not finish"]
    assert "paired" not in study.user_attrs


def test_rounds_stop_once_the_speedups_noise_settles(storage_url, set_figures):
    study = study_with_rates(storage_url, {0: 1000.0, 1: 1500.0})  # batch 8 and batch 9
    runs = set_figures(lambda job: {8: 1000.0, 9: 1500.0}[job.config["batch_size"]])  # 1% spread each run
    paired, _notes = remeasure_best(study, study.trials[1], study.trials[0], SearchOptions(), deadline=None)
    assert [len(row["samples_per_second"]) for row in paired["rounds"]] == [PAIRED_ROUNDS, PAIRED_ROUNDS]
    # Each round runs the winner, then the baseline, each in its own run of the study's measurement.
    assert [job.config["batch_size"] for job in runs.jobs()] == [9, 8] * PAIRED_ROUNDS
    assert (paired["trial"], paired["speedup"]) == (1, pytest.approx(1.5))


def test_rounds_go_on_while_the_speedups_noise_is_above_the_bar(storage_url, set_figures):
    study = study_with_rates(storage_url, {0: 1000.0, 1: 1500.0})
    winner = iter([1200.0, 1800.0] * PAIRED_MAX_ROUNDS)  # ±20% from one run to the next: noisy
    set_figures(lambda job: next(winner) if job.config["batch_size"] == 9 else 1000.0)
    paired, _notes = remeasure_best(study, study.trials[1], study.trials[0], SearchOptions(), deadline=None)
    assert [len(row["samples_per_second"]) for row in paired["rounds"]] == [PAIRED_MAX_ROUNDS, PAIRED_MAX_ROUNDS]
    assert paired["noise"] > 0.10
