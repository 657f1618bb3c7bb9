"""Budgets end to end, on tiny CPU workloads: a fixed effective batch, memory headroom, the full run's
deadline, the baseline guarantee, --verify, divergence and the search's --timeout."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import subprocess
import sys
import time

import optuna
import pytest
from conftest import workload_spec

from autotune.exceptions import SearchSpaceError
from autotune.export._export import export_best
from autotune.knobs._units import format_duration, format_size
from autotune.runner import MeasureSettings
from autotune.runner._harness import Diverged, _DivergenceGuard
from autotune.store import _records
from autotune.study import _recipe_check as recipe_check
from autotune.study._budget import Budgets
from autotune.study._loop import search
from autotune.study._options import SearchOptions
from autotune.study._plan import plan_search
from autotune.study._selection import PREFERENCES, Candidate, noise_margin, with_paired

MiB = 1024**2
DAY = 86400.0
FAST = MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_window_steps=20)
TINY_DATASET = 512  # samples in tests/workloads/tiny.py's Points
TINY_EPOCHS = 2


def _options(storage: str, space, **overrides) -> SearchOptions:
    values = {
        "workload": workload_spec(),
        "storage": storage,
        "space": space,
        "n_trials": 1,
        "measure": FAST,
        "seed": 0,
        "slow_fraction": 0.0,
        "lr_find": False,
        "objective": "throughput",
    }
    return SearchOptions(**{**values, **overrides})


def _storage(folder) -> str:
    return f"sqlite:///{folder / 'studies' / 'budgets.db'}"


def _study(storage: str, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def _check_baseline_guarantee(export, study: optuna.Study) -> None:
    """The invariant: the baseline is exported unless the fastest config beats it beyond the stated noise;
    a config at another effective batch than the recipe's is a candidate only once a recipe check kept it."""
    feasible, _ = recipe_check.exportable(
        [Candidate.from_trial(t) for t in _records.feasible_trials(study.trials)],
        _records.read_setup(study),
        recipe_check.stored_checks(study),
    )
    if study.user_attrs.get("paired"):  # the winner and the baseline re-measured side by side
        feasible = with_paired(feasible, study.user_attrs["paired"])
    fastest = max(feasible, key=lambda c: c.samples_per_second)
    baseline = next(c for c in feasible if c.is_baseline)
    explanation = export.explanation
    exported = export.document["provenance"]["trial"]
    first = f"fastest: trial #{fastest.number}, the highest throughput ({fastest.samples_per_second:.1f} samples/s)"
    if fastest.is_baseline:
        assert exported == baseline.number
        assert explanation[0] == first + "; it is the baseline: no config measured faster"
        assert not any("baseline" in line for line in explanation[1:-1])
        return
    assert explanation[0] == first
    gain = fastest.samples_per_second / baseline.samples_per_second - 1
    margin = noise_margin(fastest, baseline)
    if gain > margin:
        assert exported == fastest.number
        assert explanation[1] == (
            f"trial #{fastest.number} beats the baseline by {gain:.1%}, beyond the measured noise (±{margin:.1%})"
        )
    else:
        assert exported == baseline.number
        assert explanation[1] == (
            f"no faster config found: trial #{fastest.number} is {gain:+.1%} against the baseline, within the "
            f"measured noise (±{margin:.1%}); exporting the baseline (trial #{baseline.number})"
        )


# --- a fixed effective batch ------------------------------------------------------------------------------

EFFECTIVE_SPACE = "knobs: {batch_size: [4, 8, 16, 32, 48]}\n"


@pytest.fixture(scope="module")
def effective(tmp_path_factory):
    """tiny searched with --effective-batch 32 over batch sizes 4..48: the baseline and two sampled trials."""
    folder = tmp_path_factory.mktemp("effective")
    space = folder / "space.yaml"
    space.write_text(EFFECTIVE_SPACE)
    storage = _storage(folder)
    result = search(_options(storage, space, n_trials=3, effective_batch=32))
    return {"storage": storage, "study": _study(storage), "result": result}


def test_search_effective_batch_every_trial_keeps_batch_times_accumulation(effective):
    trials = [t for t in effective["study"].trials if "config" in t.user_attrs]
    assert len(trials) == 3
    for trial in trials:
        config = trial.user_attrs["config"]
        assert config["batch_size"] * config["accumulation_steps"] == 32, config
        assert config["batch_size"] in (4, 8, 16, 32), config
        assert trial.params.get("batch_size") != 48
        assert "accumulation_steps" not in trial.params


def test_search_effective_batch_baseline_runs_as_its_batch_times_four(effective):
    baseline = effective["study"].trials[0]
    assert baseline.user_attrs["baseline"] is True
    assert baseline.user_attrs["status"] == "ok"
    assert (baseline.user_attrs["config"]["batch_size"], baseline.user_attrs["config"]["accumulation_steps"]) == (8, 4)


def test_search_effective_batch_is_recorded_with_the_study(effective):
    setup = _records.read_setup(effective["study"])
    assert setup.space["effective_batch"] == 32
    assert setup.baseline["batch_size"] == 8
    assert setup.baseline["accumulation_steps"] == 4


def test_export_best_effective_batch_is_measured_and_kept(effective):
    export = export_best("tiny", effective["storage"])
    assert export.document["measured"]["effective_batch_size"] == 32
    assert export.config.effective_batch_size == 32
    # (512 samples // batch_size) // accumulation_steps optimizer steps per epoch, over 2 epochs, as many times
    # the samples as the recipe's progress takes at 32 samples per step instead of the recipe's 8.
    progress = export.document["progress"]
    assert (progress["recipe_effective_batch"], progress["effective_batch"]) == (8, 32)
    assert progress["samples_factor"] > 1
    assert export.document["full_run"]["epochs"] == pytest.approx(TINY_EPOCHS * progress["samples_factor"])
    assert export.document["one_cycle"]["total_steps"] == int(
        TINY_DATASET // 32 * TINY_EPOCHS * progress["samples_factor"]
    )


def test_plan_search_effective_batch_from_the_space_file(space_file, storage_url):
    space = space_file("effective_batch: 32\n" + EFFECTIVE_SPACE)
    plan = plan_search(_options(storage_url, space))
    assert plan.space.effective_batch == 32
    assert plan.space.knobs["batch_size"].choices == (4, 8, 16, 32)
    assert (plan.baseline.batch_size, plan.baseline.accumulation_steps) == (8, 4)
    assert "effective batch 32: batch_size from [4, 8, 16, 32], accumulation_steps derived" in plan.notes
    assert plan.requested_space["effective_batch"] == 32


def test_plan_search_effective_batch_option_overrides_the_space_file(space_file, storage_url):
    space = space_file("effective_batch: 32\n" + EFFECTIVE_SPACE)
    plan = plan_search(_options(storage_url, space, effective_batch=16))
    assert plan.space.effective_batch == 16
    assert plan.space.knobs["batch_size"].choices == (4, 8, 16)
    assert (plan.baseline.batch_size, plan.baseline.accumulation_steps) == (8, 2)


def test_plan_search_effective_batch_no_batch_size_divides_it(space_file, storage_url):
    space = space_file(EFFECTIVE_SPACE)
    with pytest.raises(SearchSpaceError) as caught:
        plan_search(_options(storage_url, space, effective_batch=30))
    assert str(caught.value) == f"{space}: no batch_size in [4, 8, 16, 32, 48] divides the effective batch 30"


# --- memory headroom ----------------------------------------------------------------------------------

MEMORY_BUDGET = 600 * MiB
MEMORY_LIMIT = int(MEMORY_BUDGET * 0.9)  # 540 MiB


# The memory study is searched from its own small parent process, as `autotune search` runs it,
# so that nothing of the (large) pytest process can reach the trials' figures.
HUNGRY_SEARCH = """
import dataclasses, json, sys
import optuna
from autotune.runner import MeasureSettings
from autotune.study._loop import search
from autotune.study._options import SearchOptions

storage, space, spec = sys.argv[1:4]
MiB = 1024**2
options = SearchOptions(
    workload=spec, storage=storage, space=space, n_trials=1, seed=0, slow_fraction=0.0, lr_find=False,
    max_memory_bytes=600 * MiB, memory_headroom=0.1,
    measure=MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_window_steps=20),
)
name = search(options).study_name
study = optuna.load_study(study_name=name, storage=storage)
baseline_peak = study.trials[0].user_attrs["peak_memory_bytes"]
# Each sample holds 4 MiB during the step. The baseline's 16 MiB come from the heap, which can keep a
# freed ballast resident: its peak may read up to ~32 MiB high (never low), so aim a little above the
# middle of the 540..600 MiB window. A ballast of over 32 MiB is mmapped: its peak is exact.
target = 4 + round((580 * MiB - baseline_peak) / (4 * MiB))
assert 4 < target < 160, baseline_peak
study.enqueue_trial({"batch_size": target})
study.enqueue_trial({"batch_size": 160})
search(dataclasses.replace(options, n_trials=2))
print(json.dumps({"name": name, "target": target}))
"""


@pytest.fixture(scope="module")
def hungry(tmp_path_factory):
    """memory_hungry (4 MiB per sample) under a 600 MiB budget with 10% headroom: the baseline (batch 4),
    then a batch size chosen from the baseline's peak to land between 540 and 600 MiB, then batch 160."""
    folder = tmp_path_factory.mktemp("hungry")
    space = folder / "space.yaml"
    space.write_text("effective_batch: free\nknobs: {batch_size: {low: 4, high: 160}}\n")
    storage = _storage(folder)
    done = subprocess.run(
        [sys.executable, "-c", HUNGRY_SEARCH, storage, str(space), workload_spec("memory_hungry")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "storage": storage,
        "name": found["name"],
        "study": _study(storage, found["name"]),
        "target": found["target"],
    }


PARENT_PEAK_TRIAL = """
import json, sys
from autotune.runner import MeasureSettings, TrialJob, run_trial

ballast = bytearray(768 * 1024**2)  # the parent's resident memory peaks at over 768 MiB, then drops
for index in range(0, len(ballast), 4096):
    ballast[index] = 1
del ballast
measure = MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_window_steps=20)
outcome = run_trial(TrialJob(workload=sys.argv[1], config={"batch_size": 8}, measure=measure))
print(json.dumps({"status": outcome.status.value, "peak": outcome.peak_memory_bytes}))
"""


def test_run_trial_peak_memory_is_the_trials_own_not_its_parents():
    done = subprocess.run(
        [sys.executable, "-c", PARENT_PEAK_TRIAL, workload_spec()],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["status"] == "ok"
    assert outcome["peak"] < 768 * MiB  # tiny's trial process holds a few hundred MiB, torch included


def test_search_memory_baseline_fits_below_the_headroom(hungry):
    baseline = hungry["study"].trials[0]
    assert baseline.user_attrs["status"] == "ok"
    assert baseline.user_attrs["peak_memory_bytes"] < MEMORY_LIMIT
    assert baseline.constraints["memory"] == pytest.approx(baseline.user_attrs["peak_memory_bytes"] / MEMORY_LIMIT - 1)


def test_search_memory_peak_within_the_headroom_is_oom(hungry):
    trial = hungry["study"].trials[1]
    peak = trial.user_attrs["peak_memory_bytes"]
    assert trial.user_attrs["config"]["batch_size"] == hungry["target"]
    assert MEMORY_LIMIT < peak <= MEMORY_BUDGET, (format_size(peak), hungry["target"])
    assert trial.user_attrs["status"] == "oom"
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert trial.user_attrs["reason"] == (
        f"peak memory {format_size(peak)} is above 540.0 MiB (the budget 600.0 MiB less 10% headroom)"
    )
    assert "less 10% headroom" in trial.user_attrs["reason"]
    assert trial.constraints["memory"] == pytest.approx(max(peak / MEMORY_LIMIT - 1, 0.01))  # positive: infeasible


def test_search_memory_larger_batch_after_headroom_oom_is_not_run(hungry):
    trial = hungry["study"].trials[2]
    assert trial.user_attrs["config"]["batch_size"] == 160
    assert trial.user_attrs["status"] == "oom"
    assert trial.user_attrs["skipped"] is True
    assert trial.user_attrs["reason"] == (
        f"not run: batch_size 160 >= {hungry['target']}, which ran out of memory in trial 1 "
        "with the same memory-relevant knobs"
    )


def test_search_memory_every_feasible_trial_peaks_below_the_limit(hungry):
    feasible = _records.feasible_trials(hungry["study"].trials)
    assert [t.number for t in feasible] == [0]
    for trial in feasible:
        assert trial.user_attrs["peak_memory_bytes"] < 0.9 * MEMORY_BUDGET


def test_export_best_memory_exported_peak_is_below_the_limit(hungry):
    document = export_best(hungry["name"], hungry["storage"]).document
    assert document["provenance"]["trial"] == 0
    assert document["measured"]["peak_memory_bytes"] < 0.9 * MEMORY_BUDGET
    assert document["full_run"]["memory_budget_bytes"] == MEMORY_BUDGET
    assert document["full_run"]["memory_limit_bytes"] == MEMORY_LIMIT


# --- the full run's deadline --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def missed(tmp_path_factory):
    """tiny under an impossible deadline (1 ms): the baseline (batch 8) and batch 256."""
    folder = tmp_path_factory.mktemp("missed")
    space = folder / "space.yaml"
    space.write_text("effective_batch: free\nknobs: {batch_size: [8, 256]}\n")
    storage = _storage(folder)
    options = _options(storage, space, deadline_seconds=1e-3)
    search(options)
    _study(storage).enqueue_trial({"batch_size": 256})
    result = search(options)
    return {"storage": storage, "study": _study(storage), "result": result}


def test_search_impossible_deadline_every_ok_trial_misses_it(missed):
    trials = missed["study"].trials
    assert [t.user_attrs["status"] for t in trials] == ["ok", "ok"]
    # Projected to the recipe's progress: batch 256 with the noise scale the two trials measured.
    budgets = Budgets.from_json(_records.read_setup(missed["study"]).budgets).with_noise_scale(trials)
    assert budgets.baseline_effective_batch == 8 and budgets.noise_scale > 0
    for trial in trials:
        projected = trial.user_attrs["projected_full_run_seconds"]
        assert projected == pytest.approx(budgets.project(trial.user_attrs))
        assert trial.constraints["deadline"] == pytest.approx(projected / 1e-3 - 1)
        assert trial.constraints["deadline"] > 0
        assert trial.user_attrs["reason"] == (
            f"projected full run {format_duration(projected)} misses 0.0s (the deadline 0.0s)"
        )
    assert _records.feasible_trials(trials) == []
    assert missed["result"].best is None


def test_export_best_impossible_deadline_exports_the_closest_miss(missed):
    trials = missed["study"].trials
    closest = min(trials, key=lambda t: t.user_attrs["projected_full_run_seconds"])
    projected = closest.user_attrs["projected_full_run_seconds"]
    document = export_best("tiny", missed["storage"]).document
    assert document["provenance"]["trial"] == closest.number
    assert document["full_run"]["fits_deadline"] is False
    assert document["full_run"]["deadline_seconds"] == 1e-3
    assert document["full_run"]["projected_seconds"] == pytest.approx(projected)
    assert document["selection"]["explanation"][0] == (
        f"no config fits 0.0s (the deadline 0.0s): the closest, trial #{closest.number}, "
        f"projects {format_duration(projected)}, {format_duration(projected - 1e-3)} over; exporting it"
    )


# --- a shared study: a generous deadline, the guarantee, --verify, divergence ---------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """tiny with a one-day deadline: the baseline (batch 8), batch 64, batch 256, and batch 256 at max_lr 1e6."""
    folder = tmp_path_factory.mktemp("shared")
    space = folder / "space.yaml"
    space.write_text("effective_batch: free\nknobs: {batch_size: [8, 64, 256], max_lr: [0.01, 1.0e+6]}\n")
    storage = _storage(folder)
    options = _options(storage, space, deadline_seconds=DAY)
    search(options)
    study = _study(storage)
    for params in (
        {"batch_size": 64, "max_lr": 0.01},
        {"batch_size": 256, "max_lr": 0.01},
        {"batch_size": 256, "max_lr": 1.0e6},
    ):
        study.enqueue_trial(params)
    search(dataclasses.replace(options, n_trials=3))
    study = _study(storage)
    assert [t.user_attrs["status"] for t in study.trials[:3]] == ["ok", "ok", "ok"]
    return {"storage": storage, "study": study}


def test_search_generous_deadline_every_ok_trial_fits(shared):
    ok = [t for t in shared["study"].trials if t.user_attrs["status"] == "ok"]
    assert len(ok) == 3
    for trial in ok:
        projected = trial.user_attrs["projected_full_run_seconds"]
        assert trial.constraints["deadline"] == pytest.approx(projected / DAY - 1)
        assert trial.constraints["deadline"] < 0
        assert trial.user_attrs["reason"] == ""


def test_export_best_generous_deadline_fits(shared):
    document = export_best("tiny", shared["storage"]).document
    chosen = shared["study"].trials[document["provenance"]["trial"]]
    assert document["full_run"]["fits_deadline"] is True
    assert document["full_run"]["deadline_seconds"] == DAY
    assert document["full_run"]["recipe_epochs"] == TINY_EPOCHS
    assert document["full_run"]["epochs"] == pytest.approx(TINY_EPOCHS * document["progress"]["samples_factor"])
    assert document["full_run"]["dataset_size"] == TINY_DATASET
    # At the chosen trial's figure: re-measured side by side with the baseline when the search did so.
    paired = _study(shared["storage"]).user_attrs.get("paired") or {}
    rate = paired["samples_per_second"] if paired.get("trial") == chosen.number else None
    study = _study(shared["storage"])
    budgets = Budgets.from_json(_records.read_setup(study).budgets).with_noise_scale(study.trials)
    assert document["full_run"]["projected_seconds"] == pytest.approx(budgets.project(chosen.user_attrs, rate))
    assert not any(line.startswith("no config fits") for line in document["selection"]["explanation"])


def test_export_best_larger_batch_beats_the_baseline_or_baseline_is_kept(shared):
    _check_baseline_guarantee(export_best("tiny", shared["storage"]), shared["study"])


def test_search_absurd_max_lr_ends_diverged(shared):
    trial = shared["study"].trials[3]
    assert trial.user_attrs["config"]["max_lr"] == 1.0e6
    assert trial.user_attrs["status"] == "diverged"
    assert trial.state == optuna.trial.TrialState.PRUNED
    reason = trial.user_attrs["reason"]
    assert "above 4x its starting value" in reason or "loss became nan" in reason, reason
    assert reason.startswith("loss ")


def test_divergence_guard_nan_or_inf_loss_diverges():
    for value, shown in ((float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf")):
        with pytest.raises(Diverged) as caught:
            _DivergenceGuard(None).check(value, "warm-up step 1")
        assert str(caught.value) == f"loss became {shown} in warm-up step 1"


def test_divergence_guard_loss_above_factor_times_its_first_value_diverges():
    guard = _DivergenceGuard(4.0)
    guard.check(0.5, "warm-up step 1")
    guard.check(2.0, "timed window 1")  # exactly 4x: still fine
    with pytest.raises(Diverged) as caught:
        guard.check(2.5, "timed window 2")
    assert str(caught.value) == "loss rose to 2.5 in timed window 2, above 4x its starting value 0.5"


def test_divergence_guard_without_factor_only_stops_on_nan():
    guard = _DivergenceGuard(None)
    guard.check(0.5, "warm-up step 1")
    guard.check(1e12, "timed window 1")


def test_divergence_guard_non_positive_first_loss_disables_the_factor():
    guard = _DivergenceGuard(4.0)
    guard.check(-1.0, "warm-up step 1")
    guard.check(100.0, "timed window 1")


@pytest.mark.parametrize("prefer", PREFERENCES)
def test_export_best_never_exports_a_diverged_trial(shared, prefer):
    document = export_best("tiny", shared["storage"], prefer=prefer).document
    assert document["provenance"]["trial"] != 3
    # The recipe's 0.01, or the rate a recipe check kept for a changed batch: never the trial's 1e6.
    progress = document["progress"]
    assert document["config"]["max_lr"] == progress["max_lr"]
    if progress["effective_batch"] == 8:
        assert progress["max_lr"] == 0.01
    else:
        assert progress["recipe_check"]["kept"] is True


def test_export_best_verify_remeasures_the_top_and_the_baseline(shared):
    runs = []
    export = export_best(
        "tiny",
        shared["storage"],
        verify_top=2,
        rounds=2,
        on_verify_run=lambda index, rounds, candidate, rate: runs.append((index, rounds, candidate.number, rate)),
    )
    verified = export.document["selection"]["verified"]
    # The candidates: trials at the recipe's effective batch, and any other a recipe check kept.
    study = _study(shared["storage"])
    kept = {check.trial for check in recipe_check.stored_checks(study) if check.kept}
    feasible = [
        t
        for t in _records.feasible_trials(study.trials)
        if t.user_attrs["config"]["batch_size"] == 8 or t.number in kept
    ]
    top = [t.number for t in sorted(feasible, key=_records.throughput, reverse=True)[:2]]  # the study's objective
    expected = top + ([0] if 0 not in top else [])
    assert [entry["trial"] for entry in verified] == expected
    assert 0 in [entry["trial"] for entry in verified]  # the baseline is always re-measured
    for entry in verified:
        assert len(entry["samples_per_second"]) == 2
        assert all(isinstance(rate, float) and rate > 0 for rate in entry["samples_per_second"])
    # every candidate once per round, in the same order each round
    assert [(r, n) for r, _, n, _ in runs] == [(0, n) for n in expected] + [(1, n) for n in expected]
    assert all(rounds == 2 for _, rounds, _, _ in runs)
    chosen = next(entry for entry in verified if entry["trial"] == export.document["provenance"]["trial"])
    assert export.document["measured"]["samples_per_second"] == statistics.median(chosen["samples_per_second"])
    assert _study(shared["storage"]).user_attrs["verification"]["rounds"] == verified


# --- the baseline guarantee when the baseline is already the fastest -----------------------------------


@pytest.fixture(scope="module")
def baseline_first(tmp_path_factory):
    """tiny at batch 8: the baseline (no DataLoader workers) and one worker, slower on 8-float samples."""
    folder = tmp_path_factory.mktemp("baseline_first")
    space = folder / "space.yaml"
    space.write_text("effective_batch: free\nknobs: {batch_size: [8], num_workers: [0, 1]}\n")
    storage = _storage(folder)
    options = _options(storage, space)
    search(options)
    _study(storage).enqueue_trial({"num_workers": 1})
    search(options)
    study = _study(storage)
    assert [t.user_attrs["status"] for t in study.trials] == ["ok", "ok"]
    assert study.trials[1].user_attrs["config"]["num_workers"] == 1
    return {"storage": storage, "study": study}


def test_export_best_baseline_kept_unless_beaten_beyond_noise(baseline_first):
    export = export_best("tiny", baseline_first["storage"])
    _check_baseline_guarantee(export, baseline_first["study"])
    if export.document["provenance"]["trial"] == 0:
        assert export.document["provenance"]["speedup_over_baseline"] == 1.0
        assert export.document["config"]["num_workers"] == 0


# --- the search's --timeout ---------------------------------------------------------------------------


def test_search_timeout_stops_a_hanging_trial(space_file, storage_url, fast_measure):
    space = space_file("effective_batch: free\nknobs: {batch_size: [8, 24]}\n")  # misbehaving hangs at batch 24
    storage = storage_url
    options = _options(storage, space, workload=workload_spec("misbehaving"), measure=fast_measure)
    first = search(options)
    _study(storage, first.study_name).enqueue_trial({"batch_size": 24})
    started = time.monotonic()
    # Two trials at most: one trial may take the whole budget (with four or more, at most 30% of it).
    result = search(dataclasses.replace(options, n_trials=2, timeout_seconds=6))
    elapsed = time.monotonic() - started
    assert elapsed < 60  # a sanity bound, not a speed test
    assert result.trials_run == 1
    trials = _study(storage, first.study_name).trials
    assert len(trials) == 2
    hung = trials[1]
    assert hung.user_attrs["config"]["batch_size"] == 24
    assert hung.user_attrs["status"] == "timeout"
    assert hung.state == optuna.trial.TrialState.PRUNED
    assert hung.user_attrs["reason"] == "stopped when the search's time budget ran out"
    assert result.status_counts == {"ok": 1, "timeout": 1}
    assert math.isclose(_records.read_setup(_study(storage, first.study_name)).trial_timeout_seconds, 6)


def test_verify_runs_each_round_with_the_studys_windows_and_no_more(shared, monkeypatch):
    """Rounds, not longer runs, narrow the spread between processes: a round's run is the study's
    trial with its windows fixed at the study's count."""
    from autotune.study import _verify as verify_module
    from autotune.study._selection import Candidate

    study = _study(shared["storage"])
    setup = _records.read_setup(study)
    # The search's trials may go on to 4 windows while theirs spread (the CLI's default: twice the count).
    setup = dataclasses.replace(setup, measure={**setup.measure, "max_windows": 2 * setup.measure["windows"]})
    jobs = []
    real = verify_module.run_trial
    monkeypatch.setattr(verify_module, "run_trial", lambda job, **kwargs: jobs.append(job) or real(job, **kwargs))
    verification = verify_module.verify([Candidate.from_trial(study.trials[0])], setup, rounds=1)
    assert [job.measure.max_windows for job in jobs] == [None]
    assert jobs[0].measure.windows == setup.measure["windows"]
    assert jobs[0] == dataclasses.replace(
        verify_module.trial_job(setup, study.trials[0].user_attrs["config"]), measure=jobs[0].measure
    )
    assert len(verification.candidates) == 1


def test_verify_goes_on_past_its_rounds_until_enough(shared):
    """The paired re-measurement's rule: at least `rounds`, then more up to `max_rounds` until `enough`."""
    from autotune.study._selection import Candidate
    from autotune.study._verify import verify

    study = _study(shared["storage"])
    candidates = [Candidate.from_trial(study.trials[0]), Candidate.from_trial(study.trials[1])]
    setup = _records.read_setup(study)
    seen = []

    def never(figures):
        seen.append([len(f.attrs) for f in figures])
        return False

    verification = verify(candidates, setup, rounds=1, max_rounds=3, enough=never)
    assert [len(entry["samples_per_second"]) for entry in verification.rounds] == [3, 3]
    assert len(seen) == 2  # asked after rounds 1 and 2; round 3 is the last allowed
    settled = verify(candidates, setup, rounds=2, max_rounds=5, enough=lambda figures: len(figures) == 2)
    assert [len(entry["samples_per_second"]) for entry in settled.rounds] == [2, 2]
    assert {c.number for c in settled.candidates} == {0, 1}


# --- the recipe's effective batch ----------------------------------------------------------------------

HELD_SPACE = "knobs: {batch_size: {low: 2, high: 512, log: true}, num_workers: [0, 1]}\n"


def test_search_keeps_the_recipes_effective_batch_in_every_trial_by_default(storage_url, space_file):
    """A baseline of {"batch_size": 12} that sets no effective batch: every trial steps 12 samples at a time,
    the micro-batch a divisor of 12 and accumulation_steps following it."""
    options = _options(storage_url, space_file(HELD_SPACE), workload=workload_spec("twelve"), n_trials=5)
    plan = plan_search(options)
    assert plan.space.knobs["batch_size"].choices == (2, 3, 4, 6, 12)
    assert plan.notes[:2] == [
        "the recipe's effective batch 12 is kept in every trial (--effective-batch free releases it)",
        "effective batch 12: batch_size from [2, 3, 4, 6, 12], accumulation_steps derived",
    ]
    search(options)
    study = _study(storage_url, "tiny.twelve")
    configs = [t.user_attrs["config"] for t in study.trials if "config" in t.user_attrs]
    assert len(configs) == 5
    assert {c["batch_size"] * c["accumulation_steps"] for c in configs} == {12}
    assert _records.read_setup(study).budgets["baseline_effective_batch"] == 12
    # The baseline measured the gradient noise scale, for the export to state.
    baseline = study.trials[0]
    assert baseline.user_attrs["noise"]["groups"] >= 4
    assert baseline.user_attrs["noise_scale"] > 0
    progress = export_best("tiny.twelve", storage_url).document["progress"]
    assert (progress["effective_batch"], progress["recipe_effective_batch"], progress["samples_factor"]) == (
        12,
        12,
        1.0,
    )
    assert progress["noise_scale"] > 0


def test_plan_search_free_effective_batch_says_so(storage_url, space_file):
    plan = plan_search(
        _options(storage_url, space_file(HELD_SPACE), workload=workload_spec("twelve"), effective_batch="free")
    )
    assert plan.space.knobs["batch_size"].low == 2 and plan.space.effective_batch is None
    assert plan.notes[0] == (
        "--effective-batch free: trials may change the recipe's 12 samples per optimizer step; one that does is "
        "ranked by the time to the recipe's progress (gradient noise scale) and exported only once a run to that "
        "progress is checked against the recipe's"
    )
    assert plan.budgets.baseline_effective_batch == 12


def test_plan_search_space_file_can_free_the_effective_batch(storage_url, space_file):
    space = space_file("effective_batch: free\n" + HELD_SPACE)
    plan = plan_search(_options(storage_url, space, workload=workload_spec("twelve")))
    assert plan.space.knobs["batch_size"].low == 2 and plan.space.effective_batch is None
    assert plan.notes[0].startswith(f"{space}: effective_batch free: trials may change the recipe's 12 samples")
    assert "effective_batch" not in plan.requested_space


def test_plan_search_recipe_batch_no_choice_divides_is_refused_saying_why(storage_url, space_file):
    space = space_file("knobs: {batch_size: [16, 32]}\n")
    with pytest.raises(SearchSpaceError) as caught:
        plan_search(_options(storage_url, space, workload=workload_spec("twelve")))
    assert str(caught.value) == (
        f"{space}: no batch_size in [16, 32] divides the effective batch 12, the recipe's, which every trial keeps "
        "(--effective-batch free releases it)"
    )


def test_plan_search_effective_batch_other_than_the_recipes_says_what_follows(storage_url, space_file):
    plan = plan_search(
        _options(storage_url, space_file(HELD_SPACE), workload=workload_spec("twelve"), effective_batch=48)
    )
    assert plan.notes[0] == (
        "--effective-batch: effective batch 48, not the recipe's 12: every trial is projected "
        "to the recipe's progress (gradient noise scale), and max_lr follows the batch"
    )
    assert plan.budgets.baseline_effective_batch == 12
