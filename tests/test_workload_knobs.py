"""The workload's own knobs: declared in the space file, passed to its factories, exported."""

from __future__ import annotations

import pytest
import yaml
from conftest import workload_spec

from autotune.export._export import export_best
from autotune.knobs._config import TrainConfig
from autotune.study._budget import Budgets
from autotune.study._loop import search
from autotune.study._options import SearchOptions
from autotune.study._selection import Candidate, select

SPACE = """\
knobs:
  batch_size: [8, 16]
  dataset.length: {choices: [8, 16], changes_recipe: true}
  model.width: {low: 4, high: 32, log: true}
"""


@pytest.fixture(scope="module")
def study(tmp_path_factory, request):
    from autotune.runner import MeasureSettings

    folder = tmp_path_factory.mktemp("knobs")
    (folder / "space.yaml").write_text(SPACE)
    storage = f"sqlite:///{folder / 'knobs.db'}"
    options = SearchOptions(
        workload=workload_spec(file="knobs.py"),
        storage=storage,
        space=folder / "space.yaml",
        n_trials=5,
        seed=1,
        lr_find=False,
        slow_fraction=0.0,
        measure=MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_window_steps=20),
    )
    result = search(options)
    return {"result": result, "storage": storage, "folder": folder}


def test_search_samples_workload_knobs_and_passes_them_to_the_factories(study) -> None:
    import optuna

    trials = optuna.load_study(study_name="knobs", storage=study["storage"]).trials
    baseline = trials[0]
    assert baseline.user_attrs["config"]["workload_knobs"] == {"dataset.length": 8}
    for trial in trials[1:]:
        knobs = trial.user_attrs["config"]["workload_knobs"]
        assert knobs["dataset.length"] in (8, 16)
        assert 4 <= knobs["model.width"] <= 32 and isinstance(knobs["model.width"], int)
        assert trial.params["dataset.length"] == knobs["dataset.length"]
    assert all(t.user_attrs["status"] == "ok" for t in trials)


def test_export_writes_workload_knobs_and_says_when_the_recipe_changes(study) -> None:
    out = study["folder"] / "best.yaml"
    export = export_best("knobs", study["storage"], out)
    document = yaml.safe_load(out.read_text())
    knobs = document["config"]["workload_knobs"]
    assert TrainConfig.load(out).workload_knobs == knobs
    changed = [line for line in export.explanation if "changes the recipe" in line]
    if knobs.get("dataset.length") == 16:
        assert changed == [
            "dataset.length 16 (the baseline's 8) changes the recipe: what the run learns differs, "
            "not only its speed (--prefer recipe keeps it)"
        ]
    else:
        assert changed == []


def test_export_prefer_recipe_keeps_the_baselines_sequence_length(study) -> None:
    export = export_best("knobs", study["storage"], None, prefer="recipe")
    assert export.config.workload_knobs["dataset.length"] == 8
    assert export.explanation[0].startswith("recipe: ")


def _candidate(number: int, rate: float, length: int, baseline: bool = False) -> Candidate:
    # Each trial its own batch size: a trial of the baseline's own config would be no speedup.
    config = TrainConfig.from_dict({"batch_size": 8 * (number + 1), "dataset.length": length}).to_dict()
    return Candidate(number, {"config": config}, rate, 0.01, None, is_baseline=baseline)


def test_select_prefer_recipe_takes_the_fastest_that_keeps_the_recipe() -> None:
    baseline = _candidate(0, 100.0, 8, baseline=True)
    longer, same = _candidate(1, 300.0, 16), _candidate(2, 200.0, 8)
    fastest = select([baseline, longer, same], baseline, Budgets(), recipe={"dataset.length": 8})
    assert fastest.chosen is longer
    assert fastest.explanation[-1].startswith("dataset.length 16 (the baseline's 8) changes the recipe")
    kept = select([baseline, longer, same], baseline, Budgets(), prefer="recipe", recipe={"dataset.length": 8})
    assert kept.chosen is same
    assert kept.explanation[0] == ("recipe: trial #2, the highest throughput (200.0 samples/s), keeping dataset.length")
    assert not any("changes the recipe" in line for line in kept.explanation)


def test_a_compile_mode_that_failed_is_not_run_again(tmp_path) -> None:
    import optuna

    from autotune.runner import MeasureSettings
    from autotune.store._storage import open_storage

    (tmp_path / "space.yaml").write_text('knobs:\n  batch_size: 8\n  compile: ["off", default]\n')
    storage = f"sqlite:///{tmp_path / 'compile.db'}"
    study = optuna.create_study(study_name="knobs.uncompilable", storage=open_storage(storage))
    study.enqueue_trial({"compile": "default"})
    study.enqueue_trial({"compile": "default"})
    search(
        SearchOptions(
            workload=workload_spec("uncompilable", file="knobs.py"),
            storage=storage,
            space=tmp_path / "space.yaml",
            n_trials=3,
            lr_find=False,
            slow_fraction=0.0,
            measure=MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_window_steps=20),
        )
    )
    trials = optuna.load_study(study_name="knobs.uncompilable", storage=storage).trials
    compiled = [t for t in trials if t.user_attrs["config"]["compile"] == "default"]
    assert [t.user_attrs["status"] for t in compiled] == ["error", "error"]
    assert compiled[0].user_attrs["compile_failed"] is True
    assert "InductorError" in compiled[0].user_attrs["reason"]
    assert (
        compiled[1]
        .user_attrs["reason"]
        .startswith(f"not run: compile mode default failed on this workload in trial {compiled[0].number} (")
    )
    assert all(t.state == optuna.trial.TrialState.PRUNED for t in compiled)  # TPE samples away from them
    assert [t.user_attrs["status"] for t in trials if t.user_attrs.get("baseline")] == ["ok"]
