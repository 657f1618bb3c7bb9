"""autotune.study._setup: the study's setup record: written by a new study (its workload last, so that a
half-written one is never read), checked against what a later search asks of the same study, kept with the
objective the study was started with; and whether a study's baseline already ran (its workload checked)."""

from __future__ import annotations

import optuna
import pytest
from conftest import TINY_STUDY_SPACE, copy_study, workload_spec
from optuna.trial import TrialState

from autotune.exceptions import StudyError
from autotune.store import _records
from autotune.store._storage import open_storage
from autotune.study._loop import search
from autotune.study._options import TIME_METRIC_NAME, SearchListener, SearchOptions
from autotune.study._plan import plan_search
from autotune.study._setup import baseline_measured, keep_study_objective


def _load(name: str, storage: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def _new_study(name: str, storage: str) -> optuna.Study:
    """An empty study in a not yet existing SQLite file (open_storage creates its folder)."""
    return optuna.create_study(study_name=name, storage=open_storage(storage), direction="maximize")


def test_search_study_names_its_metric_and_records_the_setup(tiny_study):
    study = _load("tiny", tiny_study["storage"])
    assert study.metric_names == [TIME_METRIC_NAME] == ["full run (s)"]
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.user_attrs["objective"] == "time"
    assert study.user_attrs["workload"] == workload_spec()
    assert study.user_attrs["baseline"]["accumulation_steps"] == 2


def test_search_resume_with_a_changed_space_is_refused_naming_the_knob(tiny_study, tmp_path):
    shared = copy_study(tiny_study, tmp_path)
    changed = tmp_path / "changed.yaml"
    changed.write_text(TINY_STUDY_SPACE.replace("[16, 32, 64]", "[16, 32]"))
    before = len(_load("tiny", shared["storage"]).trials)
    with pytest.raises(StudyError) as info:
        search(SearchOptions(**{**shared["options"].__dict__, "space": changed}))
    assert str(info.value) == (
        "study 'tiny' was started with another search space (batch_size: [16, 32, 64] -> [16, 32]); "
        "use another --study name or the original space"
    )
    assert len(_load("tiny", shared["storage"]).trials) == before


def test_search_resume_with_another_workload_on_the_same_study_is_refused(tiny_study, tmp_path):
    shared = copy_study(tiny_study, tmp_path)
    other = workload_spec("diverging")
    before = len(_load("tiny", shared["storage"]).trials)
    with pytest.raises(StudyError) as info:
        search(SearchOptions(**{**shared["options"].__dict__, "workload": other, "study_name": "tiny"}))
    assert str(info.value) == (
        f"study 'tiny' tunes workload {workload_spec()!r}, not {other!r}; use another --study name"
    )
    assert len(_load("tiny", shared["storage"]).trials) == before


class _StopAtPlan(SearchListener):
    """Records the plan's notes and stops the search before any trial runs."""

    class Stop(Exception):
        pass

    def on_plan(self, plan) -> None:
        self.notes = list(plan.notes)
        raise self.Stop


def test_search_resume_with_identical_options_adds_no_budget_note(storage_url, space_file, monkeypatch, set_figures):
    set_figures(lambda job: 1000.0)  # the workload check's step
    space = space_file("effective_batch: free\nknobs: {batch_size: [8, 16]}\n")
    options = SearchOptions(
        workload=workload_spec(), storage=storage_url, space=space, n_trials=1, device="cpu", lr_find=False
    )
    available = iter([8 * 1024**3, 8 * 1024**3 + 4096])  # free memory moves a little between two runs

    class Memory:
        def __init__(self) -> None:
            self.available = next(available)

    monkeypatch.setattr("autotune.knobs._device.psutil.virtual_memory", Memory)
    for _ in range(2):
        listener = _StopAtPlan()
        with pytest.raises(_StopAtPlan.Stop):
            search(options, listener)
    assert _load("tiny", storage_url).trials == []  # the listener stopped both before any trial
    assert [note for note in listener.notes if "effective_batch free" not in note] == []  # no budget note


def test_setup_is_complete_only_once_its_workload_is_written_last():
    study = optuna.create_study()
    written: list[str] = []
    set_user_attr = study.set_user_attr

    def recording(key, value):
        written.append(key)
        assert not _records.read_setup(study).complete  # another process reading now sees no half setup
        set_user_attr(key, value)

    study.set_user_attr = recording
    setup = _records.StudySetup(
        workload=workload_spec(),
        space={"batch_size": [8, 16]},
        baseline={"batch_size": 8, "max_lr": 0.01},
        device="cpu (x86_64)",
        budgets={"epochs": 2.0},
        requested={"epochs": 2.0},
        measure={"windows": 2},
        objective="time",
        step_closure=True,
    )
    _records.write_setup(study, setup)
    assert written[-1] == "workload"
    assert set(_records.SETUP_KEYS) <= set(written)
    assert _records.read_setup(study).to_attrs() == setup.to_attrs()
    assert _records.read_setup(study).complete


def test_search_on_a_study_whose_setup_another_process_is_still_writing_records_its_own(
    storage_url, space_file, set_figures
):
    """A second `autotune search` that starts while the first is recording the setup must not fail."""
    set_figures(lambda job: 1000.0)  # the workload check's step
    space = space_file("effective_batch: free\nknobs: {batch_size: [8, 16]}\n")
    options = SearchOptions(
        workload=workload_spec(), storage=storage_url, space=space, n_trials=1, device="cpu", lr_find=False
    )
    study = _new_study("tiny", storage_url)
    study.set_user_attr("device", "cpu (x86_64)")  # the other process got this far
    with pytest.raises(_StopAtPlan.Stop):
        search(options, _StopAtPlan())
    setup = _load("tiny", storage_url).user_attrs  # the setup's parts, as stored
    assert setup["workload"] == workload_spec()
    assert setup["space"]["batch_size"] == [8, 16]
    assert set(_records.SETUP_KEYS) <= set(setup)


def test_resume_on_another_device_or_with_other_budgets_says_so_and_records_the_new_ones(tiny_study, tmp_path):
    shared = copy_study(tiny_study, tmp_path)
    study = _load("tiny", shared["storage"])
    study.set_user_attr("device", "cuda:0 (NVIDIA H200, 139.8 GiB)")
    options = SearchOptions(**{**shared["options"].__dict__, "max_memory_bytes": 2**30})
    listener = _StopAtPlan()
    with pytest.raises(_StopAtPlan.Stop):
        search(options, listener)
    assert "study was started on cuda:0 (NVIDIA H200, 139.8 GiB); this run measures on cpu (x86_64)" in listener.notes
    assert "budgets or measurement settings differ from the study's last run; the new ones apply" in listener.notes
    setup = _load("tiny", shared["storage"]).user_attrs  # the setup's parts, as stored
    assert setup["requested"]["memory_budget_bytes"] == 2**30  # the latest budgets, for export-best
    assert setup["budgets"]["memory_budget_bytes"] == 2**30
    assert setup["device"] == "cuda:0 (NVIDIA H200, 139.8 GiB)"  # where it was started stays recorded
    assert setup["workload"] == workload_spec()


def test_baseline_measured_gives_the_dataset_size_of_a_study_whose_baseline_ran_fine(finished_study):
    storage_url, name = finished_study
    storage = open_storage(storage_url)
    assert baseline_measured(storage, name) == (16384, None)  # the demo's images; no closure found
    assert baseline_measured(storage, "no-such-study") is None


def test_baseline_measured_is_none_while_the_baseline_has_not_run_fine(storage_url):
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name="failed", storage=storage)
    assert baseline_measured(storage, "failed") is None  # no trial yet
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.PRUNED, user_attrs={"baseline": True, "status": "oom", "dataset_size": 512}
        )
    )
    assert baseline_measured(storage, "failed") is None


def test_a_resumed_study_keeps_the_objective_it_was_started_with(finished_study):
    storage_url, name = finished_study
    storage = open_storage(storage_url)
    plan = plan_search(SearchOptions(workload="autotune.demo:workload", study_name=name, objective="throughput"))
    kept = keep_study_objective(storage, plan)
    assert kept.objective == "time"  # demo-v0 ranks by the full run's time
    assert kept.notes == [
        *plan.notes,
        "the study ranks by time (it was started so); --objective throughput applies to new studies",
    ]
    same = plan_search(SearchOptions(workload="autotune.demo:workload", study_name=name, objective="time"))
    assert keep_study_objective(storage, same) is same
    new = plan_search(SearchOptions(workload="autotune.demo:workload", study_name="new", objective="throughput"))
    assert keep_study_objective(storage, new) is new  # no such study yet: its own objective


def test_a_study_started_before_the_objective_was_recorded_ranks_by_its_direction(storage_url):
    storage = open_storage(storage_url)
    optuna.create_study(study_name="tiny", storage=storage, direction="maximize")
    plan = plan_search(SearchOptions(workload=workload_spec(), objective="time"))
    assert keep_study_objective(storage, plan).objective == "throughput"
