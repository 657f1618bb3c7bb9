"""autotune.study._notes: the study note optuna-dashboard shows, written from set trials (the winner against
the baseline, the trials' statuses, where the memory limit lies, the noise scale, the range test, the recipe
checks), and the notes and figures stored with a finished study and its trials."""

from __future__ import annotations

import optuna
import optuna_dashboard
from optuna.trial import TrialState

from autotune.knobs._config import TrainConfig
from autotune.store import _records
from autotune.study import _recipe_check as recipe_check
from autotune.study._budget import Budgets
from autotune.study._notes import explain_study, explain_trial, memory_limit_found, study_note

MiB = 2**20
BUDGETS = Budgets(memory_budget_bytes=1024 * MiB, epochs=2.0)


def _trial(number: int, batch: int, status: str = "ok", rate: float | None = None, precision: str = "fp32", **attrs):
    config = TrainConfig(batch_size=batch, precision=precision).to_dict()
    user_attrs = {"config": config, "status": status, **attrs}
    if rate is not None:
        user_attrs.update(samples_per_second=rate, throughput_cv=0.01, dataset_size=512)
    state = TrialState.COMPLETE if status == "ok" else TrialState.PRUNED
    trial = optuna.trial.create_trial(state=state, value=1.0 if status == "ok" else None, user_attrs=user_attrs)
    trial.number = number
    return trial


def _lines(note: str) -> list[str]:
    return note.splitlines()


def test_study_note_names_the_winner_against_the_baseline_and_counts_the_statuses():
    trials = [
        _trial(0, 8, rate=1000.0, baseline=True, peak_memory_bytes=100 * MiB),
        _trial(1, 16, rate=1500.0, peak_memory_bytes=150 * MiB, projected_full_run_seconds=95.0),
        _trial(2, 512, "oom", peak_memory_bytes=2000 * MiB),
    ]
    lines = _lines(study_note("tiny", trials, BUDGETS, {}))
    assert lines[:3] == [
        "## autotune: tiny",
        "",
        "**Winner:** trial #1, 1500.0 samples/s, **1.50x** the baseline (trial #0, 1000.0 samples/s)",
    ]
    assert "- full run (2 epochs) projected at 1.6m" in lines
    assert lines[lines.index("| status | trials |") :][:4] == [
        "| status | trials |",
        "|---|---|",
        "| ok | 2 |",
        "| oom | 1 |",
    ]
    assert (
        "**Memory:** feasible below 921.6 MiB (the budget 1.0 GiB less 10% headroom). Largest batch that fitted: 16 "
        "(trial #1, peak 150.0 MiB). Smallest that ran out: 512 (trial #2)." in lines
    )


def test_study_note_before_any_feasible_trial():
    assert "**Winner:** no trial yet" in _lines(study_note("tiny", [], BUDGETS, {}))
    failed = [_trial(0, 8, "oom", baseline=True)]
    assert "**Winner:** no feasible trial yet (baseline is trial #0)" in _lines(study_note("tiny", failed, BUDGETS, {}))
    without = [_trial(0, 8, "oom", baseline=True), _trial(1, 16, rate=1500.0)]
    assert _lines(study_note("tiny", without, BUDGETS, {}))[2] == (
        "**Winner:** trial #1, 1500.0 samples/s, the baseline has no feasible measurement"
    )


def test_study_note_shows_each_range_test_and_its_check():
    lr = {"0": {"trial": 0, "suggestion": 0.00278, "lr_at_min_loss": 0.0215, "check": {"reason": "no worse"}}}
    note = study_note("tiny", [_trial(0, 8, rate=1000.0, baseline=True)], BUDGETS, lr)
    assert "**LR range test** (trial #0): suggested max_lr 0.00278, minimum loss at 0.0215; check: no worse" in note


def test_study_note_takes_a_changed_effective_batch_as_winner_only_once_a_recipe_check_kept_it():
    trials = [
        _trial(0, 8, rate=1000.0, baseline=True),
        _trial(1, 32, rate=4000.0),  # another effective batch than the recipe's 8
        _trial(2, 8, rate=1300.0, precision="bf16"),
    ]
    setup = {
        "workload": "tiny.py:workload",
        "budgets": {"baseline_effective_batch": 8},
        "space": {"batch_size": [8, 32]},
    }
    unchecked = study_note("tiny", trials, BUDGETS, {}, setup=setup, checks=[])
    assert "**Winner:** trial #2, 1300.0 samples/s" in unchecked
    kept = recipe_check.RecipeCheck(
        trial=1,
        config=trials[1].user_attrs["config"],
        recipe_config=trials[0].user_attrs["config"],
        effective_batch=32,
        recipe_effective_batch=8,
        noise_scale=None,
        samples_factor=1.0,
        steps=1,
        recipe_steps=1,
        seeds=[1],
        losses=[0.1],
        recipe_losses=[0.1],
        kept=True,
        reason="kept",
        seconds=0.0,
    )
    checked = study_note("tiny", trials, BUDGETS, {}, setup=setup, checks=[kept])
    assert "**Winner:** trial #1, 4000.0 samples/s" in checked


def test_memory_limit_found_from_the_trials_that_ran():
    assert memory_limit_found([_trial(0, 8, rate=1000.0)]) == "No trial has run out of memory."  # no peak recorded
    trials = [
        _trial(0, 8, "ok", peak_memory_bytes=100 * MiB),
        _trial(1, 64, "diverged", peak_memory_bytes=600 * MiB),
        _trial(2, 256, "oom", peak_memory_bytes=2000 * MiB),
        _trial(3, 128, "oom", peak_memory_bytes=1100 * MiB, skipped=True),  # predicted, never ran
    ]
    assert memory_limit_found(trials) == (
        "Largest batch that fitted: 64 (trial #1, peak 600.0 MiB). Smallest that ran out: 256 (trial #2)."
    )


def test_explain_study_writes_the_note_of_a_finished_study_with_its_checks_and_figures(finished_study):
    storage_url, name = finished_study
    study = optuna.load_study(study_name=name, storage=storage_url)
    note = explain_study(study)
    assert note.startswith("## autotune: demo-v0\n\n**Winner:** trial #0, 810.3 images/s")
    assert "**Gradient noise scale:** 248 ± 394 samples (45 groups of micro-batches)" in note
    assert "**LR range test** (trial #0): suggested max_lr 0.00278, minimum loss at 0.0215" in note
    assert "**Recipe check** (kept): trial #0 in 594 steps at effective batch 8, the recipe in 594 steps at 8" in note
    assert optuna_dashboard.get_note(study) == note
    setup_budgets = Budgets.from_json(study.user_attrs["budgets"])
    assert (
        note
        == study_note(
            name,
            study.trials,
            setup_budgets.with_noise_scale(study.trials),
            study.user_attrs["lr_find"],
            setup=_records.read_setup(study),
            checks=recipe_check.stored_checks(study),
        )
        + "\n**Recipe check** (kept): "
        + recipe_check.stored_checks(study)[0].reason
        + "\n"
    )


def test_explain_trial_notes_why_a_trial_did_not_finish_well(storage_url):
    from autotune.store._storage import open_storage

    study = optuna.create_study(study_name="notes", storage=open_storage(storage_url))
    trial = study.ask()
    explain_trial(trial, "oom", "peak memory 1.2 GiB is above 921.6 MiB")
    assert optuna_dashboard.get_note(trial) == "**oom**: peak memory 1.2 GiB is above 921.6 MiB"
