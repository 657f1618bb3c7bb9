"""autotune.study._loop.search: the baseline first, then the sampler's trials, the search's best, resuming, the
time budget, what the listener hears, and the errors raised before anything runs.

The trials of the shared tiny study (conftest's tiny_study) run in real processes; the tests that turn on
which trial is faster answer their trials from set figures (conftest's set_figures), never from this
machine's speed.
"""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
from conftest import FAST, copy_study, study_with_rates, workload_spec
from optuna.trial import TrialState

from autotune.exceptions import SearchSpaceError, WorkloadError
from autotune.knobs._config import TrainConfig
from autotune.runner import Status, TrialOutcome
from autotune.store import _records
from autotune.store._storage import open_storage
from autotune.study._loop import search
from autotune.study._lr_checks import RESERVED_SHARE_FREE
from autotune.study._options import SearchListener, SearchOptions


def _load(name: str, storage: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def _new_study(name: str, storage: str) -> optuna.Study:
    """An empty study in a not yet existing SQLite file (open_storage creates its folder)."""
    return optuna.create_study(study_name=name, storage=open_storage(storage), direction="maximize")


def _by_batch_all(shared) -> list[optuna.trial.FrozenTrial]:
    return [t for t in _load("tiny", shared["storage"]).trials if not t.user_attrs.get("baseline")]


# --- the shared tiny study ------------------------------------------------------------------------------


def test_search_baseline_is_trial_zero_with_the_workload_baseline_filled_from_space_defaults(tiny_study):
    study = _load("tiny", tiny_study["storage"])
    baseline = study.trials[0]
    assert baseline.user_attrs["baseline"] is True
    assert [t.number for t in study.trials if t.user_attrs.get("baseline")] == [0]
    # tiny.workload's baseline is {"batch_size": 8} with base_lr 1e-2; the space's default gives accumulation 2.
    assert baseline.user_attrs["config"] == TrainConfig(batch_size=8, accumulation_steps=2, max_lr=0.01).to_dict()
    assert tiny_study["result"].baseline.number == 0


def test_search_baseline_runs_when_its_batch_size_is_not_among_the_choices(tiny_study):
    baseline = _load("tiny", tiny_study["storage"]).trials[0]
    assert baseline.state == TrialState.COMPLETE
    assert baseline.user_attrs["status"] == "ok"
    assert baseline.user_attrs["config"]["batch_size"] == 8
    # Only the enqueued values the space can represent become Optuna params.
    assert baseline.params == {"accumulation_steps": 2}
    assert all(t.user_attrs["config"]["batch_size"] in (16, 32, 64) for t in _by_batch_all(tiny_study))


def test_search_result_best_is_the_fastest_feasible_trial(tiny_study):
    study = _load("tiny", tiny_study["storage"])
    result = tiny_study["result"]
    feasible = _records.feasible_trials(study.trials)
    assert result.best is not None
    assert result.best.number == min(feasible, key=lambda t: t.values[0]).number  # the projected full run
    assert result.status_counts == {"ok": 3}
    assert result.trials_run == 3


def test_search_resume_continues_trial_numbers_without_a_second_baseline(tiny_study, tmp_path):
    shared = copy_study(tiny_study, tmp_path)
    before = len(_load("tiny", shared["storage"]).trials)
    result = search(SearchOptions(**{**shared["options"].__dict__, "n_trials": 1}))
    study = _load("tiny", shared["storage"])
    assert result.trials_run == 1
    assert [t.number for t in study.trials] == list(range(before + 1))
    assert [t.number for t in study.trials if t.user_attrs.get("baseline")] == [0]
    assert not study.trials[-1].user_attrs.get("baseline")


# --- one search each ------------------------------------------------------------------------------------


def test_search_objective_throughput_ranks_by_the_workloads_unit(tmp_path):
    storage = f"sqlite:///{tmp_path / 'throughput.db'}"
    search(
        SearchOptions(
            workload=workload_spec(), storage=storage, n_trials=1, measure=FAST, lr_find=False, objective="throughput"
        )
    )
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    assert study.metric_names == ["samples/s"]
    assert study.trials[0].values == [study.trials[0].user_attrs["unit_per_second"]]
    assert [t.values[0] for t in study.trials[0:1]] == [pytest.approx(study.trials[0].user_attrs["samples_per_second"])]


def test_search_timeout_stops_the_running_trial_as_timeout(storage_url, space_file, fast_measure, set_figures):
    """The trials get the search's deadline less the share kept for the checks after them; a trial still
    running then is cut (the runner says so), and no trial starts after it."""

    def answer(job):
        if job.config["batch_size"] != 24:
            return 1000.0
        deadline = runs.calls[-1]["deadline"]
        time.sleep(max(0.0, deadline - time.monotonic()) + 0.05)  # it hangs until the runner cuts it
        return TrialOutcome(status=Status.TIMEOUT, reason="stopped when the search's time budget ran out")

    runs = set_figures(answer)
    space = space_file("effective_batch: free\nknobs: {batch_size: [8, 24]}\n")
    study = _new_study("tiny.misbehaving", storage_url)
    study.enqueue_trial({"batch_size": 24})  # hangs in its first step
    result = search(
        SearchOptions(
            lr_find=False,
            workload=workload_spec("misbehaving"),
            storage=storage_url,
            space=space,
            n_trials=3,
            measure=fast_measure,
            seed=0,
            timeout_seconds=5.0,
        )
    )
    hung = _load("tiny.misbehaving", storage_url).trials[0]
    assert hung.user_attrs["config"]["batch_size"] == 24
    assert hung.state == TrialState.PRUNED
    assert hung.user_attrs["status"] == "timeout"
    assert hung.user_attrs["reason"] == "stopped when the search's time budget ran out"
    assert result.trials_run < 3
    check, trial = runs.calls  # the workload's check at the baseline, then the hung trial: nothing after it
    assert check["job"].config["batch_size"] == 8 and trial["job"].config["batch_size"] == 24
    # The workload check may take the whole budget; the trials stop at the share kept for what follows them.
    assert check["deadline"] - trial["deadline"] == pytest.approx(RESERVED_SHARE_FREE * 5.0)


def test_search_space_error_raises_before_any_study_or_trial(storage_url, space_file):
    space = space_file("knobs:\n  batch_sise: [8, 16]\n")
    with pytest.raises(SearchSpaceError) as info:
        search(SearchOptions(workload=workload_spec(), storage=storage_url, space=space, n_trials=1, lr_find=False))
    assert str(info.value) == f"{space}: unknown knob 'batch_sise' (did you mean 'batch_size'?)"
    assert not Path(storage_url.removeprefix("sqlite:///")).exists()  # the storage was never opened


def test_search_workload_import_error_raises_before_any_study_or_trial(storage_url, space_file):
    spec = workload_spec(file="broken_import.py")
    path = spec.rpartition(":")[0]
    with pytest.raises(WorkloadError) as info:
        search(
            SearchOptions(
                workload=spec,
                storage=storage_url,
                space=space_file("effective_batch: free\nknobs: {batch_size: [8]}\n"),
            )
        )
    assert str(info.value) == f"workload {spec!r}: cannot import {path!r}: No module named 'not_installed_anywhere'"
    assert not Path(storage_url.removeprefix("sqlite:///")).exists()  # the storage was never opened


def test_the_searchs_best_is_never_a_trial_that_ran_the_baselines_config(storage_url):
    study = study_with_rates(storage_url, {0: 1000.0, 1: 900.0})
    # A sampler may propose the baseline's config again: trial #2 measured it faster, by chance.
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.COMPLETE,
            value=1240.0,
            user_attrs={**study.trials[0].user_attrs, "baseline": False, "samples_per_second": 1240.0},
        )
    )
    assert _records.best_trial(study.trials, "throughput").number == 0
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.COMPLETE,
            value=1100.0,
            user_attrs={**study.trials[1].user_attrs, "samples_per_second": 1100.0},
        )
    )
    assert _records.best_trial(study.trials, "throughput").number == 3


# --- decisions on set figures ---------------------------------------------------------------------------


class _Recorder(SearchListener):
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def on_plan(self, plan) -> None:
        self.events.append(("plan", plan.study_name))

    def on_workload_check(self, plan) -> None:
        self.events.append(("workload check", plan.baseline.precision))

    def on_trial_start(self, number, config, is_baseline) -> None:
        self.events.append(("start", number, config.precision, is_baseline))

    def on_trial_end(self, trial, best) -> None:
        self.events.append(("end", trial.number, None if best is None else best.number))


def test_search_tells_the_listener_each_step_and_checks_the_workload_of_a_new_study_only(
    storage_url, space_file, fast_measure, set_figures
):
    runs = set_figures(lambda job: {"fp32": 1000.0, "bf16": 3000.0}[job.config["precision"]])
    options = SearchOptions(
        workload=workload_spec(),
        storage=storage_url,
        space=space_file("knobs: {precision: [fp32, bf16]}\n"),
        n_trials=1,
        measure=fast_measure,
        lr_find=False,
    )
    first = _Recorder()
    search(options, first)
    assert first.events == [("workload check", "fp32"), ("plan", "tiny"), ("start", 0, "fp32", True), ("end", 0, 0)]
    assert len(runs.calls) == 2  # the workload's check, then the baseline
    _load("tiny", storage_url).enqueue_trial({"precision": "bf16"})
    again = _Recorder()
    search(options, again)  # the baseline ran fine: the workload is not checked again
    assert again.events == [("plan", "tiny"), ("start", 1, "bf16", False), ("end", 1, 1)]
    assert runs.calls[2]["job"].config["precision"] == "bf16"  # trial #1 is the first run of the resumed search


def test_search_adds_each_searchs_wall_time_to_the_studys(storage_url, space_file, fast_measure, set_figures):
    set_figures(lambda job: 1000.0)
    options = SearchOptions(
        workload=workload_spec(),
        storage=storage_url,
        space=space_file("knobs: {batch_size: [8]}\n"),
        n_trials=1,
        measure=fast_measure,
        lr_find=False,
    )
    first = search(options)
    second = search(options)
    assert first.seconds > 0 and second.seconds > 0
    assert _load("tiny", storage_url).user_attrs["search_seconds"] == pytest.approx(first.seconds + second.seconds)


def test_search_grid_runs_every_config_once_the_baseline_first(storage_url, space_file, fast_measure, set_figures):
    set_figures(lambda job: 1000.0 + job.config["num_workers"])
    result = search(
        SearchOptions(
            workload=workload_spec(),
            storage=storage_url,
            space=space_file("knobs: {num_workers: [0, 1], precision: [fp32, bf16]}\n"),
            n_trials=20,
            measure=fast_measure,
            lr_find=False,
            sampler="grid",
        )
    )
    trials = _load("tiny", storage_url).trials
    configs = [(t.user_attrs["config"]["num_workers"], t.user_attrs["config"]["precision"]) for t in trials]
    assert result.trials_run == 4  # the grid's four configs, not the 20 asked for
    assert configs[0] == (0, "fp32") and trials[0].user_attrs["baseline"] is True
    assert sorted(configs) == [(0, "bf16"), (0, "fp32"), (1, "bf16"), (1, "fp32")]


def test_search_stops_when_its_first_trials_all_fail_with_one_error(storage_url, space_file, fast_measure, set_figures):
    def answer(job):
        if not runs.calls[1:]:  # the workload check's step runs fine
            return 1000.0
        return TrialOutcome(status=Status.ERROR, reason="ValueError: no labels at tiny.py:30")

    runs = set_figures(answer)
    with pytest.raises(WorkloadError) as info:
        search(
            SearchOptions(
                workload=workload_spec(),
                storage=storage_url,
                space=space_file("effective_batch: free\nknobs: {batch_size: [8, 16, 24, 32, 40]}\n"),
                n_trials=5,
                measure=fast_measure,
                lr_find=False,
                seed=0,
            )
        )
    assert str(info.value) == (
        "the search stopped: its first 3 trials (#0, #1, #2) all failed with the same error: "
        "ValueError: no labels at tiny.py:30"
    )
    trials = _load("tiny", storage_url).trials
    assert [t.state for t in trials] == [TrialState.FAIL] * 3  # stopped there: no fourth trial


def test_a_new_study_starts_from_the_best_of_an_earlier_one_on_the_same_workload_and_device(
    storage_url, space_file, fast_measure, set_figures
):
    set_figures(lambda job: 1000.0 + 500 * (job.config["precision"] == "bf16") + job.config["num_workers"])
    space = space_file("knobs: {batch_size: [8], num_workers: [0, 1], precision: [fp32, bf16]}\n")
    shared = dict(workload=workload_spec(), storage=storage_url, space=space, measure=fast_measure, lr_find=False)
    search(SearchOptions(**shared, study_name="first", n_trials=4))
    search(SearchOptions(**shared, study_name="second", n_trials=2))
    trials = _load("second", storage_url).trials
    assert trials[0].user_attrs["baseline"] is True
    assert trials[1].user_attrs["from_study"] == "first"  # right after the baseline
    assert (trials[1].params["precision"], trials[1].params["num_workers"]) == ("bf16", 1)
    search(SearchOptions(**shared, study_name="second", n_trials=1))  # resumed: its own records lead
    assert [t.user_attrs.get("from_study") for t in _load("second", storage_url).trials].count("first") == 1


def test_the_guided_search_says_which_knobs_it_left_at_the_baseline_and_why(
    storage_url, space_file, fast_measure, set_figures, tmp_path
):
    from autotune import export_best

    set_figures(lambda job: 1000.0 + 500 * (job.config["precision"] == "bf16") - job.config["num_workers"])
    space = space_file(
        "knobs: {batch_size: [8], num_workers: [0, 1], precision: [fp32, bf16], compile: [off, default],"
        " pin_memory: [false, true]}\n"
    )
    search(
        SearchOptions(
            workload=workload_spec(), storage=storage_url, space=space, measure=fast_measure, n_trials=4, lr_find=False
        )
    )
    study = _load("tiny", storage_url)
    assert "too short to repay a compile" in study.user_attrs["held_knobs"]["compile"]
    kept = export_best("tiny", storage_url).document["selection"]["kept_at_baseline"]
    assert set(kept) == {"num_workers", "compile", "pin_memory"}
    # dropped before the search, on this CPU: said as the plan said it
    assert kept["pin_memory"] == (
        "pin_memory left at false: pin_memory=true: pinned memory only speeds up copies to a CUDA device"
    )
    assert kept["num_workers"].startswith("num_workers left at 0: ")
    assert "with 1 were not chosen (the fastest of them, trial #2, 1499.0 samples/s)" in kept["num_workers"]
    assert kept["compile"] == study.user_attrs["held_knobs"]["compile"]
