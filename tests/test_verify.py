"""autotune.study._verify: the top candidates re-measured in interleaved rounds (each run answered from set
figures, conftest's set_figures): the rounds' order, each candidate's median and spread, failed rounds,
further rounds until enough, the deadline; and the jobs that measure a config as the study's trials did."""

from __future__ import annotations

import statistics
import time

import pytest

from autotune.knobs._config import TrainConfig
from autotune.runner import MeasureSettings, Status, TrialOutcome
from autotune.study._selection import Candidate
from autotune.study._verify import round_job, trial_job, verify

SETUP = {
    "workload": "tests/workloads/tiny.py:workload",
    "torch_device": "cpu",
    "measure": {"warmup_steps": 1, "windows": 2, "window_seconds": 0.2, "max_windows": 6},
    "budgets": {"memory_budget_bytes": 2**30},
    "trial_timeout_seconds": 45.0,
    "step_closure": True,
}


def _candidate(number: int, batch: int) -> Candidate:
    config = TrainConfig(batch_size=batch).to_dict()
    return Candidate(
        number=number, attrs={"config": config}, samples_per_second=1.0, spread=0.0, peak_memory_bytes=None
    )


def _rounds(**rates: list):
    """Each run of batch N answered with the next of ``rates["bN"]`` (None: the run ran out of memory)."""
    left = {int(key[1:]): iter(values) for key, values in rates.items()}

    def answer(job):
        rate = next(left[job.config["batch_size"]])
        return TrialOutcome(status=Status.OOM, reason="out of memory") if rate is None else rate

    return answer


def test_verify_runs_every_candidate_once_per_round_in_the_same_order(set_figures):
    runs = set_figures(_rounds(b8=[100.0, 110.0, 90.0], b16=[200.0, 200.0, 200.0]))
    seen = []
    verification = verify(
        [_candidate(3, 16), _candidate(0, 8)],
        SETUP,
        rounds=3,
        on_run=lambda index, rounds, candidate, rate: seen.append((index, rounds, candidate.number, rate)),
    )
    assert [job.config["batch_size"] for job in runs.jobs()] == [16, 8, 16, 8, 16, 8]
    assert seen == [
        (0, 3, 3, 200.0),
        (0, 3, 0, 100.0),
        (1, 3, 3, 200.0),
        (1, 3, 0, 110.0),
        (2, 3, 3, 200.0),
        (2, 3, 0, 90.0),
    ]
    assert verification.rounds == [
        {"trial": 3, "samples_per_second": [200.0, 200.0, 200.0]},
        {"trial": 0, "samples_per_second": [100.0, 110.0, 90.0]},
    ]
    fast, slow = verification.candidates
    assert (fast.number, fast.samples_per_second, slow.number, slow.samples_per_second) == (3, 200.0, 0, 100.0)
    # The spread: the larger of the rounds' and the windows' (1% in every run here).
    rounds_cv = statistics.pstdev([100.0, 110.0, 90.0]) / 100.0
    assert (slow.spread, slow.window_spread) == (pytest.approx(rounds_cv), pytest.approx(0.01))
    assert (fast.spread, fast.window_spread) == (pytest.approx(0.01), pytest.approx(0.01))


def test_verify_leaves_failed_rounds_out_and_a_candidate_without_a_good_round(set_figures):
    set_figures(_rounds(b8=[100.0, None, 120.0], b16=[None, None, None]))
    verification = verify([_candidate(0, 8), _candidate(1, 16)], SETUP, rounds=3)
    assert verification.rounds == [
        {"trial": 0, "samples_per_second": [100.0, None, 120.0]},
        {"trial": 1, "samples_per_second": [None, None, None]},
    ]
    [measured] = verification.candidates  # trial #1 never measured: left out
    assert (measured.number, measured.samples_per_second) == (0, 110.0)


def test_verify_goes_on_past_its_rounds_until_enough_or_its_most(set_figures):
    runs = set_figures(lambda job: 100.0)
    figures_seen = []

    def enough(figures):
        figures_seen.append(len(figures))
        return len(runs.calls) >= 8  # enough after four rounds of two

    verification = verify([_candidate(0, 8), _candidate(1, 16)], SETUP, rounds=2, max_rounds=6, enough=enough)
    assert len(verification.rounds[0]["samples_per_second"]) == 4
    assert figures_seen == [2, 2, 2]  # asked after rounds 2, 3 and 4, with both candidates' figures
    never = verify([_candidate(0, 8)], SETUP, rounds=1, max_rounds=3, enough=lambda figures: False)
    assert len(never.rounds[0]["samples_per_second"]) == 3


def test_verify_runs_no_round_past_its_own_once_the_deadline_leaves_no_time(set_figures):
    runs = set_figures(lambda job: 100.0)
    deadline = time.monotonic() - 1.0  # spent: every run is cut as a timeout by the runner
    verification = verify([_candidate(0, 8)], SETUP, rounds=2, max_rounds=6, enough=lambda f: False, deadline=deadline)
    assert len(verification.rounds[0]["samples_per_second"]) == 2
    assert [call["deadline"] for call in runs.calls] == [deadline, deadline]


def test_trial_job_measures_a_config_as_the_studys_trials_did_and_a_round_in_the_studys_windows():
    config = TrainConfig(batch_size=16).to_dict()
    job = trial_job(SETUP, config)
    assert (job.workload, job.config, job.device) == (SETUP["workload"], config, "cpu")
    assert job.measure == MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_windows=6)
    assert (job.memory_budget_bytes, job.timeout_seconds, job.step_closure) == (2**30, 45.0, True)
    assert round_job(SETUP, config).measure == MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2)
    bare = trial_job({"workload": SETUP["workload"]}, config)  # a study recorded before these were
    assert (bare.device, bare.measure, bare.memory_budget_bytes, bare.timeout_seconds) == (
        "cpu",
        MeasureSettings(),
        None,
        600.0,
    )
