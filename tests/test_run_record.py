"""The run record: its projection for the steps run, the line report prints, and the study write-back."""

from __future__ import annotations

import optuna
import pytest

from autotune.exceptions import AutotuneError
from autotune.training._run_record import ACTUAL_KEY_PREFIX, actuals, full_run_line, project_seconds, ratio

ACTUAL = {
    "trial": 2,
    "seconds": 66.0,
    "projected_seconds": 60.0,
    "time_ratio": 1.1,
    "samples_per_second": 430.0,
    "measured_samples_per_second": 450.0,
    "throughput_ratio": 430.0 / 450.0,
    "steps": 1000,
    "epochs": 2.99,
    "full_run": False,
    "full_run_estimate_seconds": 202.0,
    "full_run_projected_seconds": 183.5,
}


def test_project_seconds_is_the_steps_samples_over_the_rate_plus_warmup():
    assert project_seconds(100, 49, {"samples_per_second": 490.0, "warmup_seconds": 2.0}) == 12.0
    assert project_seconds(100, 49, {"samples_per_second": 490.0}) == 10.0
    assert project_seconds(100, 49, {}) is None


def test_ratio_without_a_denominator_is_none():
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(3.0, None) is None and ratio(None, 2.0) is None and ratio(3.0, 0.0) is None


def test_full_run_line_of_a_partial_run_shows_the_full_run_at_its_pace():
    assert full_run_line(ACTUAL) == (
        "run of 1000 steps of trial #2: projected 60.0s, actual 66.0s (1.10x); 430.0 samples/s, 0.96x the measured "
        "450.0; full run at this pace 3.4m (projected 3.1m)"
    )


def test_full_run_line_of_the_full_run():
    line = full_run_line(
        {**ACTUAL, "full_run": True, "seconds": 190.0, "projected_seconds": 183.5, "time_ratio": 1.035}
    )
    assert (
        line == "full run of trial #2: projected 3.1m, actual 3.2m (1.03x); 430.0 samples/s, 0.96x the measured 450.0"
    )


def test_full_run_line_without_a_projection_shows_the_actual_only():
    line = full_run_line({"trial": 0, "seconds": 5.0, "steps": 10, "full_run": False})
    assert line == "run of 10 steps of trial #0: actual 5.0s"


def test_actuals_reads_the_runs_by_trial_number(storage_url):
    from autotune.store._storage import open_storage

    study = optuna.create_study(study_name="s", storage=open_storage(storage_url))
    study.set_user_attr(f"{ACTUAL_KEY_PREFIX}3", {"trial": 3})
    study.set_user_attr(f"{ACTUAL_KEY_PREFIX}x", {"trial": "x"})
    study.set_user_attr("workload", "tiny")
    assert actuals(study) == {3: {"trial": 3}}


def test_record_on_study_unknown_study_raises_for_a_warning(tmp_path, storage_url):
    from autotune.store._storage import open_storage
    from autotune.training._run_record import record_on_study

    optuna.create_study(study_name="other", storage=open_storage(storage_url))

    class Record:
        study, trial = "gone", 0

    with pytest.raises(AutotuneError, match="no study named 'gone'"):
        record_on_study(Record(), storage_url)  # type: ignore[arg-type]
