"""The search's samplers (TPE, random, an exhaustive grid) and --no-pruning, on real trials."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from conftest import workload_spec

from autotune.cli import main
from autotune.exceptions import ParameterError, SearchSpaceError
from autotune.store import _records
from autotune.study._loop import search
from autotune.study._options import SearchListener, SearchOptions

KNOBS = workload_spec(file="knobs.py")
# The baseline (batch 8, dataset.length 8) is one of the grid's points; length 8192 is ~10x slower per sample.
GRID_SPACE = "effective_batch: free\nknobs:\n  batch_size: [8, 16]\n  dataset.length: [8, 8192]\n"


def _options(storage_url: str, space: Path, fast_measure, **extra) -> SearchOptions:
    return SearchOptions(
        workload=KNOBS,
        storage=storage_url,
        space=str(space),
        measure=fast_measure,
        seed=0,
        lr_find=False,
        objective="throughput",
        **extra,
    )


def _configs(storage_url: str, study: str) -> list[tuple[int, int]]:
    trials = optuna.load_study(study_name=study, storage=storage_url).get_trials(deepcopy=False)
    return sorted(
        (t.user_attrs["config"]["batch_size"], t.user_attrs["config"]["workload_knobs"]["dataset.length"])
        for t in trials
    )


def test_grid_runs_every_config_once_and_no_pruning_measures_the_slow_ones(storage_url, space_file, fast_measure):
    space = space_file(GRID_SPACE)
    result = search(_options(storage_url, space, fast_measure, sampler="grid", pruning=False, n_trials=100))
    assert result.trials_run == 4  # 2 x 2 points, the baseline among them: n_trials stops at the grid's end
    assert _configs(storage_url, result.study_name) == [(8, 8), (8, 8192), (16, 8), (16, 8192)]
    assert result.status_counts == {"ok": 4}  # the slow points measured in full
    # Resumed: the grid is done, nothing runs again.
    again = search(_options(storage_url, space, fast_measure, sampler="grid", pruning=False, n_trials=100))
    assert again.trials_run == 0
    assert len(_configs(storage_url, result.study_name)) == 4


def test_with_pruning_the_slow_grid_points_are_cut(storage_url, space_file, fast_measure):
    result = search(_options(storage_url, space_file(GRID_SPACE), fast_measure, sampler="grid", n_trials=100))
    trials = optuna.load_study(study_name=result.study_name, storage=storage_url).get_trials(deepcopy=False)
    statuses = {
        (
            t.user_attrs["config"]["batch_size"],
            t.user_attrs["config"]["workload_knobs"]["dataset.length"],
        ): _records.status(t)
        for t in trials
    }
    assert statuses[(8, 8)] == statuses[(16, 8)] == "ok"
    assert statuses[(8, 8192)] == statuses[(16, 8192)] == "slow"


def test_random_sampler_samples_the_space(storage_url, space_file, fast_measure):
    space = space_file("effective_batch: free\nknobs:\n  batch_size: [8, 16, 32, 64]\n")
    result = search(_options(storage_url, space, fast_measure, sampler="random", pruning=False, n_trials=5))
    assert result.trials_run == 5
    assert set(b for b, _ in _configs(storage_url, result.study_name)) <= {8, 16, 32, 64}


def test_a_grid_over_a_range_is_refused_before_anything_is_created(tmp_path, space_file):
    space = space_file("effective_batch: free\nknobs:\n  batch_size: {low: 8, high: 64}\n  num_workers: [0, 1]\n")
    db = tmp_path / "grid.db"
    result = CliRunner().invoke(
        main,
        ["search", "--workload", KNOBS, "--space", str(space), "--sampler", "grid", "--storage", f"sqlite:///{db}"],
    )
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "grid needs a list of choices" in lines[0] and "batch_size is a range" in lines[0]
    assert not db.exists()
    with pytest.raises(SearchSpaceError):
        from autotune.study._plan import plan_search

        plan_search(SearchOptions(workload=KNOBS, space=str(space), sampler="grid"))


def test_an_unknown_sampler_is_refused():
    with pytest.raises(ParameterError, match="sampler must be one of guided, tpe, random, grid"):
        SearchOptions(sampler="cmaes")  # type: ignore[arg-type]


class _Plans(SearchListener):
    def __init__(self) -> None:
        self.plans = []

    def on_plan(self, plan) -> None:
        self.plans.append(plan)


def test_the_batch_range_follows_the_dataset(storage_url, space_file, fast_measure, tiny_spec):
    """tests/workloads/tiny.py has 512 samples: batch sizes above it are not sampled, with a note."""
    space = space_file("effective_batch: free\nknobs:\n  batch_size: {low: 256, high: 8192, log: true}\n")
    listener = _Plans()
    options = SearchOptions(
        workload=tiny_spec,
        storage=storage_url,
        space=str(space),
        measure=fast_measure,
        seed=0,
        lr_find=False,
        objective="throughput",
        sampler="random",
        pruning=False,
        n_trials=5,
    )
    result = search(options, listener)
    assert "batch_size up to 512: the dataset has 512 samples" in listener.plans[0].notes
    trials = optuna.load_study(study_name=result.study_name, storage=storage_url).get_trials(deepcopy=False)
    sampled = [t.user_attrs["config"]["batch_size"] for t in trials if not t.user_attrs.get("baseline")]
    assert len(sampled) == 4 and all(256 <= b <= 512 for b in sampled)
    assert result.status_counts == {"ok": 5}
    # Resumed (no workload check): the size comes from the baseline trial, the cap holds.
    listener = _Plans()
    search(dataclasses.replace(options, n_trials=2), listener)
    assert "batch_size up to 512: the dataset has 512 samples" in listener.plans[0].notes


def test_choices_above_the_dataset_are_dropped_and_none_left_is_refused(
    storage_url, space_file, fast_measure, tiny_spec
):
    from autotune.knobs._space import load_space

    space = load_space(space_file("effective_batch: free\nknobs:\n  batch_size: [8, 64, 1024, 4096]\n"))
    capped, notes = space.cap_batch(512)
    assert capped.knobs["batch_size"].choices == (8, 64)
    assert notes == ["batch_size up to 512: the dataset has 512 samples"]
    assert space.cap_batch(512, accumulation_steps=16)[0].knobs["batch_size"].choices == (8,)
    with pytest.raises(SearchSpaceError, match="the dataset has 4 samples, fewer than every batch_size"):
        space.cap_batch(4)
