"""autotune report: the full runs recorded by autotune train, projected against actual."""

from __future__ import annotations

import optuna

from autotune.report._report import build_report
from autotune.store._storage import open_storage
from autotune.training._run_record import ACTUAL_KEY_PREFIX


def test_build_report_lists_the_recorded_full_runs(storage_url, capsys):
    from autotune.report._console import print_report

    study = optuna.create_study(study_name="s", storage=open_storage(storage_url), direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=100.0, user_attrs={"status": "ok", "samples_per_second": 100.0}))
    actual = {
        "trial": 0,
        "seconds": 12.0,
        "projected_seconds": 10.0,
        "time_ratio": 1.2,
        "samples_per_second": 90.0,
        "measured_samples_per_second": 100.0,
        "throughput_ratio": 0.9,
        "steps": 50,
        "full_run": True,
    }
    study.set_user_attr(f"{ACTUAL_KEY_PREFIX}0", actual)
    report = build_report("s", storage_url)
    assert report.full_runs == [actual]
    assert report.to_json()["full_runs"] == [actual]
    print_report(report)
    assert "full run of trial #0: projected 10.0s, actual 12.0s (1.20x); 90.0 samples/s, 0.90x the measured 100.0" in (
        capsys.readouterr().out
    )


def test_report_shows_the_side_by_side_re_measurement_and_its_challengers(storage_url, capsys):
    from autotune.report._console import print_report

    study = optuna.create_study(study_name="s", storage=open_storage(storage_url), direction="maximize")
    for rate in (100.0, 150.0, 400.0):
        study.add_trial(optuna.trial.create_trial(value=rate, user_attrs={"status": "ok", "samples_per_second": rate}))
    paired = {
        "trial": 1,
        "baseline_trial": 0,
        "speedup": 1.3,
        "noise": 0.08,
        "challengers": [2],
        "rounds": [{"trial": n, "samples_per_second": [1.0, 1.0, 1.0]} for n in (2, 1, 0)],
        "figures": [
            {"trial": 0, "samples_per_second": 100.0},
            {"trial": 1, "samples_per_second": 130.0},
            {"trial": 2, "samples_per_second": 120.5},
        ],
    }
    study.set_user_attr("paired", paired)
    report = build_report("s", storage_url)
    assert report.to_json()["paired"] == paired
    print_report(report)
    out = " ".join(capsys.readouterr().out.split())
    assert (
        "measured side by side at the end of the search (3 interleaved rounds in fresh processes): trial #1 "
        "1.30x the baseline (#0), ±8.0% noise"
    ) in out
    assert (
        "measured faster than the search's first pick once, beyond the noise, and so re-measured beside it and "
        "the baseline: trial #2 (120.5 samples/s)"
    ) in out


def test_report_shows_the_gradient_noise_scale_and_the_recipe_checks(storage_url, capsys):
    from autotune.knobs._config import TrainConfig
    from autotune.report._console import print_report
    from autotune.study import _recipe_check as recipe_check

    study = optuna.create_study(study_name="s", storage=open_storage(storage_url), direction="maximize")
    config = TrainConfig(batch_size=8).to_dict()
    for rate, noise in ((100.0, {"gradient_sq": [1.0, 3.0], "trace": [40.0, 120.0]}), (150.0, None)):
        study.add_trial(
            optuna.trial.create_trial(
                value=rate,
                user_attrs={
                    "status": "ok",
                    "samples_per_second": rate,
                    "config": config,
                    "noise": noise,
                    "noise_scale": None if noise is None else 40.0,
                },
            )
        )
    recipe_check.store(
        study,
        recipe_check.RecipeCheck(
            trial=1,
            config={**config, "max_lr": 0.004},
            recipe_config=config,
            effective_batch=8,
            recipe_effective_batch=8,
            noise_scale=40.0,
            samples_factor=1.0,
            steps=10,
            recipe_steps=10,
            seeds=[1, 2],
            losses=[1.0, 1.1],
            recipe_losses=[1.2, 1.3],
            kept=True,
            reason="trial #1 ...: no worse within the seed spread",
            seconds=2.0,
        ),
    )
    report = build_report("s", storage_url)
    assert report.noise_scale["value"] == 40.0 and report.noise_scale["trials"] == 1
    assert [row["noise_scale"] for row in report.rows] == [None, 40.0]  # fastest first
    assert [check["trial"] for check in report.to_json()["recipe_checks"]] == [1]
    print_report(report)
    out = capsys.readouterr().out
    assert "gradient noise scale: 40 samples (2 groups of micro-batches), from 1 trial" in out
    assert "recipe check (kept): trial #1 ...: no worse within the seed spread" in out
