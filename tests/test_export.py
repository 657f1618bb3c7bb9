"""export_best on finished studies: the chosen trial, the document's sections, files, and refusals."""

from __future__ import annotations

import datetime
import json
import re

import optuna
import pytest
import torch
import yaml
from conftest import workload_spec
from export_documents import CONFIGS, CUDA, make_document
from optuna.trial import TrialState

import autotune
from autotune.exceptions import NoFeasibleTrialError, StudyError, UsageError
from autotune.export import hf_export
from autotune.export._export import MEASURED_FIELDS, default_out, export_best, export_format, render
from autotune.knobs._config import FIELD_NAMES, TrainConfig
from autotune.knobs._units import format_duration
from autotune.runner import MeasureSettings
from autotune.store import _records
from autotune.store._storage import open_storage, redact
from autotune.study._loop import search
from autotune.study._options import SearchOptions

MiB = 1024**2
FAST = MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_window_steps=20)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished study of tiny whose recipe accumulates 32 micro-batches of 8: the baseline and one trial
    of the same effective batch in one micro-batch of 256, several times faster."""
    folder = tmp_path_factory.mktemp("export")
    space = folder / "space.yaml"
    space.write_text("knobs: {batch_size: [8, 256]}\n")
    storage = f"sqlite:///{folder / 'studies' / 'export.db'}"
    # A long full run (1000 epochs): its steady part, not the trials' second of warm-up, decides.
    options = SearchOptions(
        lr_find=False,
        epochs=1000,
        study_name="tiny",
        workload=workload_spec("accumulating"),
        storage=storage,
        space=space,
        n_trials=1,
        measure=FAST,
        seed=0,
        slow_fraction=0.0,
    )
    search(options)  # the baseline
    optuna.load_study(study_name="tiny", storage=storage).enqueue_trial({"batch_size": 256})
    search(options)
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert [t.user_attrs["status"] for t in study.trials] == ["ok", "ok"]
    return {"storage": storage, "study": study}


def test_export_best_document_has_config_measured_and_provenance(finished):
    document = export_best("tiny", finished["storage"]).document
    assert {"config", "measured", "provenance"} <= set(document)
    assert list(document["config"]) == list(FIELD_NAMES)
    for key in MEASURED_FIELDS:
        assert key in document["measured"], key
    provenance = document["provenance"]
    for key in (
        "study",
        "trial",
        "device",
        "torch_version",
        "optuna_version",
        "autotune_version",
        "exported_at",
        "baseline_trial",
        "speedup_over_baseline",
        "storage",
        "workload",
    ):
        assert key in provenance, key
    assert provenance["study"] == "tiny"
    assert provenance["storage"] == finished["storage"]
    assert provenance["workload"] == workload_spec("accumulating")
    assert provenance["device"] == "cpu"
    assert provenance["torch_version"] == torch.__version__
    assert provenance["optuna_version"] == optuna.__version__
    assert provenance["autotune_version"] == autotune.__version__
    assert datetime.datetime.fromisoformat(provenance["exported_at"]).tzinfo is not None
    assert provenance["baseline_trial"] == 0


def test_export_best_exports_the_fastest_feasible_trial_beyond_noise(finished):
    export = export_best("tiny", finished["storage"])
    # The study ranks by the full run's projected time (its default objective).
    fastest = _records.best_trial(finished["study"].trials, "time")
    provenance, measured = export.document["provenance"], export.document["measured"]
    assert fastest.user_attrs["config"]["batch_size"] == 256
    assert provenance["trial"] == fastest.number
    assert export.document["config"] == fastest.user_attrs["config"]
    assert export.config == TrainConfig.from_dict(fastest.user_attrs["config"])
    assert (
        fastest.user_attrs["config"]["accumulation_steps"],
        finished["study"].trials[0].user_attrs["config"]["accumulation_steps"],
    ) == (1, 32)  # the recipe's effective batch, in one micro-batch
    # The search re-measured the winner beside the baseline at its end: the export takes those figures.
    paired = finished["study"].user_attrs["paired"]
    assert paired["trial"] == fastest.number
    assert measured["samples_per_second"] == paired["samples_per_second"]
    assert measured["effective_batch_size"] == 256
    assert measured["window_samples_per_second"] == fastest.user_attrs["window_samples_per_second"]
    assert export.explanation[0] == (
        f"fastest: trial #{fastest.number}, the shortest projected full run "
        f"({format_duration(export.document['full_run']['projected_seconds'])} at "
        f"{paired['samples_per_second']:.1f} samples/s)"
    )
    assert re.fullmatch(
        rf"trial #{fastest.number} beats the baseline by \d+\.\d%, beyond the measured noise \(±\d+\.\d%\)",
        export.explanation[1],
    )


def test_export_best_is_at_least_as_fast_as_the_baseline(finished):
    provenance = export_best("tiny", finished["storage"]).document["provenance"]
    trials = finished["study"].trials
    baseline = trials[provenance["baseline_trial"]]
    chosen = trials[provenance["trial"]]
    assert baseline.user_attrs["baseline"] is True
    # Both measured side by side at the end of the search: the claim rests on those figures.
    paired = finished["study"].user_attrs["paired"]
    assert (paired["trial"], paired["baseline_trial"]) == (chosen.number, baseline.number)
    assert paired["samples_per_second"] >= paired["baseline_samples_per_second"]
    assert provenance["baseline_samples_per_second"] == paired["baseline_samples_per_second"]
    assert provenance["speedup_over_baseline"] == round(
        paired["samples_per_second"] / paired["baseline_samples_per_second"], 4
    )
    assert provenance["speedup_over_baseline"] > 1


@pytest.mark.parametrize(
    ("name", "fmt", "parse"),
    [
        ("best.yaml", None, yaml.safe_load),
        ("best.cfg", None, yaml.safe_load),  # any suffix but .json is YAML
        ("best.json", None, json.loads),
        ("best.yaml", "json", json.loads),  # fmt= wins over the suffix
        ("best.json", "yaml", yaml.safe_load),
    ],
)
def test_export_best_writes_the_format_by_suffix_or_fmt_and_reads_back(finished, tmp_path, name, fmt, parse):
    out = tmp_path / "nested" / name
    export = export_best("tiny", finished["storage"], out=out, fmt=fmt)
    assert export.path == out
    text = out.read_text()
    if parse is yaml.safe_load:
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)
    written = parse(text)
    assert written["config"] == export.document["config"]
    assert written["provenance"]["trial"] == export.document["provenance"]["trial"]
    if not (out.suffix == ".json" and fmt == "yaml"):  # TrainConfig.load reads .json files as JSON only
        assert TrainConfig.load(out) == export.config


def test_export_best_json_file_is_loaded_by_trainconfig(finished, tmp_path):
    export = export_best("tiny", finished["storage"], out=tmp_path / "best.json")
    assert TrainConfig.load(tmp_path / "best.json") == export.config
    assert set(json.loads((tmp_path / "best.json").read_text())) >= {"config", "measured", "provenance"}


def test_export_best_without_a_path_writes_nothing(finished):
    assert export_best("tiny", finished["storage"]).path is None


def test_export_best_without_study_name_picks_the_only_study(finished):
    assert export_best(None, finished["storage"]).document["provenance"]["study"] == "tiny"


def test_export_best_missing_study_lists_existing_studies(finished):
    with pytest.raises(StudyError) as info:
        export_best("nope", finished["storage"])
    assert str(info.value) == f"no study named 'nope' in {finished['storage']} (studies: tiny)"


def test_export_best_provenance_redacts_the_storage_password(finished, monkeypatch):
    real = finished["storage"]
    monkeypatch.setattr(
        "autotune.export._export.load_study", lambda name, url: optuna.load_study(study_name=name, storage=real)
    )
    provenance = export_best("tiny", "postgresql://alice:s3cret@db.example:5432/autotune").document["provenance"]
    assert provenance["storage"] == "postgresql://alice:***@db.example:5432/autotune"
    assert "s3cret" not in json.dumps(provenance)


def test_redact_hides_only_the_password():
    assert (
        redact("postgresql://alice:s3cret@db.example:5432/autotune")
        == "postgresql://alice:***@db.example:5432/autotune"
    )
    assert redact("postgresql://alice@db.example/autotune") == "postgresql://alice@db.example/autotune"
    assert redact("sqlite:///studies/autotune.db") == "sqlite:///studies/autotune.db"
    assert redact("not a url") == "not a url"


def test_export_best_with_no_feasible_trial_names_the_study_and_status_counts(storage_url, space_file, fast_measure):
    search(
        SearchOptions(
            lr_find=False,
            workload=workload_spec(),
            storage=storage_url,
            space=space_file("effective_batch: free\nknobs: {batch_size: [8, 16]}\n"),
            n_trials=1,
            measure=fast_measure,
            seed=0,
            max_memory_bytes=1 * MiB,  # nothing fits in 1 MiB
        )
    )
    with pytest.raises(NoFeasibleTrialError) as info:
        export_best("tiny", storage_url)
    assert str(info.value) == "study 'tiny' has no feasible trial to export (1 oom)"


# Studies built from recorded trials (no processes): the selection rules, exactly.


def _attrs(batch: int, rate: float | None, cv: float = 0.0, *, baseline: bool = False, status: str = "ok") -> dict:
    attrs = {
        "config": TrainConfig(batch_size=batch).to_dict(),
        "status": status,
        "reason": "" if status == "ok" else "ValueError: boom at train.py:1",
        "samples_per_second": rate,
        "throughput_cv": cv,
        "peak_memory_bytes": 100 * MiB,
        "dataset_size": 512,
        "warmup_seconds": 1.0,
        "device": "cpu",
        "torch_version": torch.__version__,
        "window_samples_per_second": [rate, rate] if rate else [],
    }
    if baseline:
        attrs["baseline"] = True
    return attrs


def _recorded_study(storage: str, name: str, *trials: tuple[TrialState, dict], seconds: float = 3.0) -> optuna.Study:
    """A study holding these finished trials, each ``seconds`` long."""
    study = optuna.create_study(study_name=name, storage=open_storage(storage), direction="maximize")
    for state, attrs in trials:
        value = attrs["samples_per_second"] if state == TrialState.COMPLETE else None
        trial = optuna.trial.create_trial(state=state, value=value, user_attrs=attrs)
        trial.datetime_start = trial.datetime_complete - datetime.timedelta(seconds=seconds)
        study.add_trial(trial)
    return study


def test_export_best_keeps_the_baseline_when_the_gain_is_within_noise(storage_url):
    _recorded_study(
        storage_url,
        "noisy",
        (TrialState.COMPLETE, _attrs(8, 1000.0, 0.05, baseline=True)),
        (TrialState.COMPLETE, _attrs(16, 1040.0, 0.05)),
    )
    export = export_best("noisy", storage_url)
    assert export.document["provenance"]["trial"] == 0
    assert export.document["config"]["batch_size"] == 8
    assert export.explanation == [
        "fastest: trial #1, the highest throughput (1040.0 samples/s)",
        "no faster config found: trial #1 is +4.0% against the baseline, within the measured noise (±14.1%); "
        "exporting the baseline (trial #0)",
        "max_lr 0.001, the recipe's",
    ]
    assert export.document["provenance"]["speedup_over_baseline"] == 1.0


def test_export_best_empty_study_reports_no_trials(storage_url):
    _recorded_study(storage_url, "empty")
    with pytest.raises(NoFeasibleTrialError) as info:
        export_best("empty", storage_url)
    assert str(info.value) == "study 'empty' has no feasible trial to export (no trials)"


def test_export_best_counts_every_status_when_nothing_is_feasible(storage_url):
    _recorded_study(
        storage_url,
        "failing",
        (TrialState.FAIL, _attrs(8, None, baseline=True, status="error")),
        (TrialState.PRUNED, _attrs(16, None, status="oom")),
        (TrialState.PRUNED, _attrs(32, None, status="oom")),
        (TrialState.PRUNED, _attrs(64, 10.0, status="diverged")),
    )
    with pytest.raises(NoFeasibleTrialError) as info:
        export_best("failing", storage_url)
    assert str(info.value) == "study 'failing' has no feasible trial to export (1 error, 2 oom, 1 diverged)"


def test_export_best_without_study_name_refuses_a_storage_with_several(storage_url):
    _recorded_study(storage_url, "b", (TrialState.COMPLETE, _attrs(8, 10.0, baseline=True)))
    _recorded_study(storage_url, "a", (TrialState.COMPLETE, _attrs(8, 10.0, baseline=True)))
    with pytest.raises(StudyError) as info:
        export_best(None, storage_url)
    assert str(info.value) == f"storage {storage_url} has 2 studies; pick one with --study (a, b)"


def test_export_best_baseline_is_the_successful_rerun_after_a_failed_baseline(storage_url):
    _recorded_study(
        storage_url,
        "rerun",
        (TrialState.FAIL, _attrs(8, None, baseline=True, status="error")),  # e.g. a flaky first attempt
        (TrialState.COMPLETE, _attrs(8, 1000.0, baseline=True)),  # the re-run
        (TrialState.COMPLETE, _attrs(64, 4000.0)),
    )
    document = export_best("rerun", storage_url).document
    assert document["provenance"]["trial"] == 2
    assert document["provenance"]["speedup_over_baseline"] == 4.0
    assert document["provenance"]["baseline_trial"] == 1
    assert document["payoff"]["baseline_projected_seconds"] is not None


def test_export_best_payoff_of_trials_without_duration(storage_url):
    _recorded_study(
        storage_url,
        "imported",
        (TrialState.COMPLETE, _attrs(8, 1000.0, baseline=True)),
        (TrialState.COMPLETE, _attrs(64, 4000.0)),
        seconds=0.0,
    )
    payoff = export_best("imported", storage_url).document["payoff"]
    assert payoff["speedup_over_baseline"] == 4.0
    assert payoff["search_seconds"] == 0.0


def _paired_study(storage: str, name: str, challenger_rate: float) -> optuna.Study:
    """Baseline #0, a challenger #1 measured once, and #2, the search's winner re-measured beside the baseline."""
    study = _recorded_study(
        storage,
        name,
        (TrialState.COMPLETE, _attrs(8, 1000.0, 0.05, baseline=True)),
        (TrialState.COMPLETE, _attrs(16, challenger_rate, 0.05)),
        (TrialState.COMPLETE, _attrs(32, 1320.0, 0.05)),
    )
    study.set_user_attr(
        "paired",
        {
            "trial": 2,
            "baseline_trial": 0,
            "samples_per_second": 1280.0,
            "spread": 0.03,
            "baseline_samples_per_second": 1000.0,
            "baseline_spread": 0.03,
            "speedup": 1.28,
            "noise": 0.085,
            "rounds": [
                {"trial": 2, "samples_per_second": [1270.0, 1290.0]},
                {"trial": 0, "samples_per_second": [990.0, 1010.0]},
            ],
            "unit": "samples",
            "seconds": 4.0,
        },
    )
    return study


def test_export_best_keeps_the_re_measured_winner_over_a_single_figure_within_noise(storage_url):
    # #1's one figure (1300) is above #2's re-measured one (1280) by less than their noise.
    _paired_study(storage_url, "incumbent", 1300.0)
    export = export_best("incumbent", storage_url)
    assert export.document["provenance"]["trial"] == 2
    assert export.document["measured"]["samples_per_second"] == 1280.0
    assert export.explanation[1] == (
        "trial #1 (+1.6%) measured faster than trial #2 once, within the noise of the two; #2, re-measured "
        "beside the baseline at the end of the search, is kept"
    )


def test_export_best_takes_a_single_figure_beyond_the_noise_of_the_re_measured_winner(storage_url):
    _paired_study(storage_url, "challenger", 1600.0)
    export = export_best("challenger", storage_url)
    assert export.document["provenance"]["trial"] == 1
    assert not any(
        "re-measured beside the baseline at the end of the search, is kept" in line for line in export.explanation
    )


def _setup_attrs(study: optuna.Study, *, free: bool = True) -> None:
    """The setup a search records: the recipe (batch 8 at max_lr 0.001), its budgets, the space."""
    study.set_user_attr("baseline", TrainConfig(batch_size=8, max_lr=1e-3).to_dict())
    study.set_user_attr("budgets", {"epochs": 2.0, "baseline_effective_batch": 8})
    study.set_user_attr("space", {"batch_size": [8, 64]} if free else {"batch_size": 8, "effective_batch": 8})
    study.set_user_attr("objective", "throughput")
    study.set_user_attr("workload", "tiny.py:workload")


def _noise(value: float) -> dict:
    return {"noise": {"gradient_sq": [1.0] * 3, "trace": [value] * 3}}


def test_export_best_a_changed_batch_needs_a_kept_recipe_check(storage_url):
    """Batch 64 measures 4x the baseline's throughput; without a recipe check the recipe's batch is exported,
    saying why; once a check keeps it at its rule's max_lr, it is exported with the progress it changes."""
    from autotune.study import _recipe_check as recipe_check

    study = _recorded_study(
        storage_url,
        "progress",
        (TrialState.COMPLETE, {**_attrs(8, 1000.0, 0.01, baseline=True), **_noise(56.0)}),
        (TrialState.COMPLETE, {**_attrs(64, 4000.0, 0.01), "adaptive_optimizer": True}),
    )
    _setup_attrs(study)
    export = export_best("progress", storage_url)
    assert export.document["provenance"]["trial"] == 0
    assert (
        "1 trial at another effective batch than the recipe's 8 (#1) is not exported without a recipe check "
        "that keeps it" in export.explanation
    )

    scaled = 1e-3 * (64 / 8) ** 0.5  # AdamW: the square-root rule
    trial = study.trials[1]
    recipe_check.store(
        study,
        recipe_check.RecipeCheck(
            trial=1,
            config={**trial.user_attrs["config"], "max_lr": scaled},
            recipe_config=study.trials[0].user_attrs["config"],
            effective_batch=64,
            recipe_effective_batch=8,
            noise_scale=56.0,
            samples_factor=1.875,
            steps=30,
            recipe_steps=128,
            seeds=[1, 2, 3],
            losses=[0.5, 0.5, 0.5],
            recipe_losses=[0.5, 0.51, 0.49],
            kept=True,
            reason="no worse within the seed spread",
            seconds=1.0,
            recipe_trial=0,
        ),
    )
    export = export_best("progress", storage_url)
    document = export.document
    assert document["provenance"]["trial"] == 1
    assert document["config"]["max_lr"] == pytest.approx(scaled)
    progress = document["progress"]
    # B_noise 56: from 8 to 64 samples per step takes (1 + 64/56) / (1 + 8/56) = 1.875x the samples.
    assert progress["samples_factor"] == pytest.approx(1.875)
    assert (progress["effective_batch"], progress["recipe_effective_batch"]) == (64, 8)
    assert (progress["recipe_steps"], progress["steps"]) == (512 * 2 // 8, int(512 * 2 * 1.875 // 64))
    assert progress["noise_scale"] == pytest.approx(56.0)
    assert progress["lr_rule"] == "sqrt" and progress["recipe_max_lr"] == 1e-3
    assert progress["changes"] == ["effective batch 64 (the recipe's 8)", f"max_lr {scaled:.3g} (the recipe's 0.001)"]
    assert progress["recipe_check"]["kept"] is True
    assert document["full_run"]["epochs"] == pytest.approx(2.0 * 1.875)
    assert document["full_run"]["recipe_epochs"] == 2.0
    assert document["one_cycle"]["total_steps"] == int(512 // 64 * 2 * 1.875)
    assert export.explanation[-1] == f"max_lr {scaled:.3g}, checked against the recipe: no worse within the seed spread"
    assert export.explanation[-2].startswith(
        "effective batch 64 instead of the recipe's 8: 1.88x the samples to the recipe's progress (gradient noise "
        "scale 56 ± 0 samples (3 groups of micro-batches)), 30 optimizer steps instead of 128; the full run to "
        "that progress projects "
    )
    payoff = document["payoff"]
    assert payoff["samples_factor"] == pytest.approx(1.875)
    assert payoff["time_speedup"] == pytest.approx(payoff["baseline_projected_seconds"] / payoff["projected_seconds"])
    assert payoff["line"].startswith(
        "4.00x the baseline's throughput at 4000.0 samples/s, with 1.88x its samples "
        "to the recipe's progress: the full run projects "
    )


def test_export_best_faster_per_sample_but_slower_to_the_same_progress_loses_saying_why(storage_url):
    """Batch 64 at 2x the throughput, but the noise scale (4 samples) makes it need 6x the samples."""
    from autotune.study import _recipe_check as recipe_check

    study = _recorded_study(
        storage_url,
        "slower",
        (TrialState.COMPLETE, {**_attrs(8, 1000.0, 0.01, baseline=True), **_noise(4.0)}),
        (TrialState.COMPLETE, _attrs(64, 2000.0, 0.01)),
    )
    _setup_attrs(study)
    study.set_user_attr("objective", "time")
    recipe_check.store(
        study,
        recipe_check.RecipeCheck(
            trial=1,
            config={**study.trials[1].user_attrs["config"], "max_lr": 1e-3 * 8**0.5},
            recipe_config=study.trials[0].user_attrs["config"],
            effective_batch=64,
            recipe_effective_batch=8,
            noise_scale=4.0,
            samples_factor=17 / 3,
            steps=1,
            recipe_steps=1,
            seeds=[1],
            losses=[0.5],
            recipe_losses=[0.5],
            kept=True,
            reason="kept",
            seconds=1.0,
            recipe_trial=0,
        ),
    )
    export = export_best("slower", storage_url)
    assert export.document["provenance"]["trial"] == 0
    assert any(
        line.startswith(
            "trial #1 has the highest steady throughput (2000.0 samples/s, +100%), but with its "
            "effective batch 64 needing 5.67x the recipe's samples to reach its progress "
            "(gradient noise scale 4) the full run projects "
        )
        for line in export.explanation
    ), export.explanation


# --- Formats and files: render, export_format, default_out ----------------------------------------


def test_render_framework_form_is_yaml_or_json_with_one_line_per_code_line():
    document = make_document(CONFIGS["compile-accumulation"], device=CUDA)
    form = hf_export(document)
    assert yaml.safe_load(render(document, "hf")) == form
    assert json.loads(render(document, "hf", as_json=True)) == form
    assert len(render(document, "hf").splitlines()) == 1 + len(form["TrainingArguments"]) + 1 + len(form["code"]) + 6


@pytest.mark.parametrize(
    ("out", "fmt", "expected"),
    [
        ("best.yaml", None, "yaml"),
        ("best.json", None, "json"),
        ("train.py", None, "torch"),
        (None, None, "yaml"),
        ("hf.json", "hf", "hf"),
        ("best.json", "lightning", "lightning"),
        ("run.py", "torch", "torch"),
    ],
)
def test_export_format_from_the_option_or_the_suffix(out, fmt, expected):
    from pathlib import Path

    assert export_format(Path(out) if out else None, fmt) == expected


def test_export_format_torch_needs_a_python_file():
    from pathlib import Path

    with pytest.raises(UsageError) as info:
        export_format(Path("out/best.yaml"), "torch")
    assert str(info.value) == "--format torch writes a Python script: --out must end in .py, got 'out/best.yaml'"


@pytest.mark.parametrize(
    ("fmt", "name"),
    [
        (None, "best.yaml"),
        ("json", "best.json"),
        ("hf", "best_hf.yaml"),
        ("lightning", "best_lightning.yaml"),
        ("accelerate", "best_accelerate.yaml"),
        ("torch", "best_train.py"),
    ],
)
def test_default_out_names_a_file_per_format(fmt, name):
    assert default_out(fmt) == name
