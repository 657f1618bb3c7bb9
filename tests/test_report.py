"""autotune report: the full runs recorded by autotune train, projected against actual."""

from __future__ import annotations

import optuna

from autotune.report import build_report
from autotune.run_record import ACTUAL_KEY_PREFIX
from autotune.storage import open_storage


def test_build_report_lists_the_recorded_full_runs(storage_url, capsys):
    from autotune._console import print_report

    study = optuna.create_study(study_name="s", storage=open_storage(storage_url), direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=100.0, user_attrs={"status": "ok", "samples_per_second": 100.0}))
    actual = {"trial": 0, "seconds": 12.0, "projected_seconds": 10.0, "time_ratio": 1.2, "samples_per_second": 90.0,
              "measured_samples_per_second": 100.0, "throughput_ratio": 0.9, "steps": 50, "full_run": True}
    study.set_user_attr(f"{ACTUAL_KEY_PREFIX}0", actual)
    report = build_report("s", storage_url)
    assert report.full_runs == [actual]
    assert report.to_json()["full_runs"] == [actual]
    print_report(report)
    assert "full run of trial #0: projected 10.0s, actual 12.0s (1.20x); 90.0 samples/s, 0.90x the measured 100.0" in (
        capsys.readouterr().out
    )
