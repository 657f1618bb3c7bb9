"""End-to-end tests of autotune.study._loop.search: real trial processes on the tiny CPU workloads.

Each trial is a fresh Python process (about 2-3 s), so every test keeps its space small and
pins the order of the interesting configs with ``study.enqueue_trial``.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import workload_spec
from optuna.trial import TrialState

from autotune.exceptions import SearchSpaceError, StudyError, UsageError, WorkloadError
from autotune.knobs._config import FIELD_NAMES, TrainConfig
from autotune.runner import MeasureSettings
from autotune.store import _records
from autotune.store._storage import open_storage
from autotune.study._loop import search
from autotune.study._lr_checks import run_lr_find
from autotune.study._lr_find import LRFindResult
from autotune.study._options import TIME_METRIC_NAME, SearchListener, SearchOptions
from autotune.study._plan import plan_search
from autotune.study._recovery import SearchProcess

MiB = 1024**2

# The conftest's fast_measure, for module-scoped fixtures (which cannot use a function-scoped one).
FAST = MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_window_steps=20)

MEASURED_ATTRS = (
    "status",
    "reason",
    "samples_per_second",
    "unit_per_second",
    "throughput_cv",
    "peak_memory_bytes",
    "data_wait_fraction",
    "warmup_seconds",
    "compile_seconds",
    "loss_start",
    "loss_end",
    "device",
    "torch_version",
    "config",
)

# The baseline (tiny: batch 8) is not among these choices; accumulation_steps has a space default.
SHARED_SPACE = (
    "effective_batch: free\nknobs:\n  batch_size: [16, 32, 64]\n  accumulation_steps: {choices: [1, 2], default: 2}\n"
)


def _kept_recipe_checks(study: optuna.Study, *numbers: int) -> None:
    """Record a kept recipe check for each trial (as if the search had run one)."""
    from autotune.study import _recipe_check as recipe_check

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for number in numbers:
        config = trials[number].user_attrs["config"]
        recipe_check.store(
            study,
            recipe_check.RecipeCheck(
                trial=number,
                config=config,
                recipe_config=trials[0].user_attrs["config"],
                effective_batch=0,
                recipe_effective_batch=8,
                noise_scale=None,
                samples_factor=1.0,
                steps=1,
                recipe_steps=1,
                seeds=[1],
                losses=[1.0],
                recipe_losses=[1.0],
                kept=True,
                reason="kept",
                seconds=0.0,
            ),
        )


def _load(name: str, storage: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage)


def _new_study(name: str, storage: str) -> optuna.Study:
    """An empty study in a not yet existing SQLite file (open_storage creates its folder)."""
    return optuna.create_study(study_name=name, storage=open_storage(storage), direction="maximize")


def _by_batch(study: optuna.Study) -> dict[int, optuna.trial.FrozenTrial]:
    """Non-baseline trials by batch size (each test enqueues every batch size once)."""
    return {t.user_attrs["config"]["batch_size"]: t for t in study.trials if not t.user_attrs.get("baseline")}


def _by_batch_all(shared) -> list[optuna.trial.FrozenTrial]:
    return [t for t in _load("tiny", shared["storage"]).trials if not t.user_attrs.get("baseline")]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One finished study of tiny: the baseline and two TPE trials (slow pruning off, so all run)."""
    folder = tmp_path_factory.mktemp("shared")
    space = folder / "space.yaml"
    space.write_text(SHARED_SPACE)
    storage = f"sqlite:///{folder / 'studies' / 'shared.db'}"
    options = SearchOptions(
        lr_find=False,
        workload=workload_spec(),
        storage=storage,
        space=space,
        n_trials=3,
        measure=FAST,
        seed=0,
        slow_fraction=0.0,
    )
    result = search(options)
    return {"options": options, "result": result, "storage": storage, "folder": folder}


def test_search_baseline_is_trial_zero_with_the_workload_baseline_filled_from_space_defaults(shared):
    study = _load("tiny", shared["storage"])
    baseline = study.trials[0]
    assert baseline.user_attrs["baseline"] is True
    assert [t.number for t in study.trials if t.user_attrs.get("baseline")] == [0]
    # tiny.workload's baseline is {"batch_size": 8} with base_lr 1e-2; the space's default gives accumulation 2.
    assert baseline.user_attrs["config"] == TrainConfig(batch_size=8, accumulation_steps=2, max_lr=0.01).to_dict()
    assert shared["result"].baseline.number == 0


def test_search_baseline_runs_when_its_batch_size_is_not_among_the_choices(shared):
    baseline = _load("tiny", shared["storage"]).trials[0]
    assert baseline.state == TrialState.COMPLETE
    assert baseline.user_attrs["status"] == "ok"
    assert baseline.user_attrs["config"]["batch_size"] == 8
    # Only the enqueued values the space can represent become Optuna params.
    assert baseline.params == {"accumulation_steps": 2}
    assert all(t.user_attrs["config"]["batch_size"] in (16, 32, 64) for t in _by_batch_all(shared))


def test_search_finished_trials_record_every_measured_user_attribute(shared):
    study = _load("tiny", shared["storage"])
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) >= 3
    for trial in finished:
        missing = [key for key in MEASURED_ATTRS if key not in trial.user_attrs]
        assert missing == [], f"trial {trial.number} lacks {missing}"
        assert set(trial.user_attrs["config"]) == set(FIELD_NAMES)
        assert trial.user_attrs["status"] == "ok"
        assert trial.user_attrs["reason"] == ""
        assert trial.user_attrs["device"] == "cpu"
        assert trial.user_attrs["samples_per_second"] > 0
        # The objective: the full run's projected time (its steady part, warm-up included).
        assert trial.values == [trial.user_attrs["projected_full_run_seconds"]]


def test_search_study_names_its_metric_and_records_the_setup(shared):
    study = _load("tiny", shared["storage"])
    assert study.metric_names == [TIME_METRIC_NAME] == ["full run (s)"]
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.user_attrs["objective"] == "time"
    assert study.user_attrs["workload"] == workload_spec()
    assert study.user_attrs["baseline"]["accumulation_steps"] == 2


def test_search_intermediate_values_hold_per_window_projections(shared):
    trials = _by_batch_all(shared)
    assert trials
    for trial in trials:
        windows = trial.user_attrs["window_samples_per_second"]
        assert len(windows) == FAST.windows
        assert sorted(trial.intermediate_values) == list(range(FAST.windows))
        # tiny's two epochs at each window's rate, x the samples this trial's effective batch takes to the
        # recipe's progress (by the noise scale known when it started): one factor for all its windows.
        samples = trial.user_attrs["dataset_size"] * 2
        factors = [
            value * rate / samples for (_, value), rate in zip(sorted(trial.intermediate_values.items()), windows)
        ]
        assert factors == pytest.approx([factors[0]] * len(factors), rel=1e-4)
        if _records.effective_batch_of(trial) == 16:  # the recipe's: 8 x 2
            assert factors[0] == pytest.approx(1.0, rel=1e-4)


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


def test_search_result_best_is_the_fastest_feasible_trial(shared):
    study = _load("tiny", shared["storage"])
    result = shared["result"]
    feasible = _records.feasible_trials(study.trials)
    assert result.best is not None
    assert result.best.number == min(feasible, key=lambda t: t.values[0]).number  # the projected full run
    assert result.status_counts == {"ok": 3}
    assert result.trials_run == 3


def test_search_resume_continues_trial_numbers_without_a_second_baseline(shared):
    before = len(_load("tiny", shared["storage"]).trials)
    result = search(SearchOptions(**{**shared["options"].__dict__, "n_trials": 1}))
    study = _load("tiny", shared["storage"])
    assert result.trials_run == 1
    assert [t.number for t in study.trials] == list(range(before + 1))
    assert [t.number for t in study.trials if t.user_attrs.get("baseline")] == [0]
    assert not study.trials[-1].user_attrs.get("baseline")


def test_search_resume_with_a_changed_space_is_refused_naming_the_knob(shared):
    changed = shared["folder"] / "changed.yaml"
    changed.write_text(SHARED_SPACE.replace("[16, 32, 64]", "[16, 32]"))
    before = len(_load("tiny", shared["storage"]).trials)
    with pytest.raises(StudyError) as info:
        search(SearchOptions(**{**shared["options"].__dict__, "space": changed}))
    assert str(info.value) == (
        "study 'tiny' was started with another search space (batch_size: [16, 32, 64] -> [16, 32]); "
        "use another --study name or the original space"
    )
    assert len(_load("tiny", shared["storage"]).trials) == before


def test_search_resume_with_another_workload_on_the_same_study_is_refused(shared):
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


def test_search_resume_with_identical_options_adds_no_budget_note(storage_url, space_file, monkeypatch):
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
        assert _records.read_setup(study) == {}  # another process reading now sees no half setup
        set_user_attr(key, value)

    study.set_user_attr = recording
    setup = {key: f"value of {key}" for key in _records.SETUP_KEYS}
    _records.write_setup(study, setup)
    assert written[-1] == "workload"
    assert sorted(written) == sorted(_records.SETUP_KEYS)
    assert _records.read_setup(study) == setup


def test_search_on_a_study_whose_setup_another_process_is_still_writing_records_its_own(storage_url, space_file):
    """A second `autotune search` that starts while the first is recording the setup must not fail."""
    space = space_file("effective_batch: free\nknobs: {batch_size: [8, 16]}\n")
    options = SearchOptions(
        workload=workload_spec(), storage=storage_url, space=space, n_trials=1, device="cpu", lr_find=False
    )
    study = _new_study("tiny", storage_url)
    study.set_user_attr("device", "cpu (x86_64)")  # the other process got this far
    with pytest.raises(_StopAtPlan.Stop):
        search(options, _StopAtPlan())
    setup = _records.read_setup(_load("tiny", storage_url))
    assert setup["workload"] == workload_spec()
    assert setup["space"]["batch_size"] == [8, 16]
    assert set(setup) == set(_records.SETUP_KEYS)


def test_search_memory_oom_is_pruned_and_larger_batches_are_skipped_without_a_process(
    storage_url, space_file, fast_measure
):
    space = space_file("effective_batch: free\nknobs: {batch_size: [4, 8, 128, 256]}\n")
    options = SearchOptions(
        lr_find=False,
        workload=workload_spec("memory_hungry"),
        storage=storage_url,
        space=space,
        n_trials=1,
        measure=fast_measure,
        seed=0,
        max_memory_bytes=500 * MiB,
        slow_fraction=0.0,
    )
    search(options)  # the baseline (batch 4, about 16 MiB of ballast) alone
    study = _load("tiny.memory_hungry", storage_url)
    study.enqueue_trial({"batch_size": 128})  # 512 MiB of ballast: over the 500 MiB budget
    study.enqueue_trial({"batch_size": 256})
    result = search(SearchOptions(**{**options.__dict__, "n_trials": 3}))

    study = _load("tiny.memory_hungry", storage_url)
    trials = study.trials
    assert trials[0].user_attrs["baseline"] is True and trials[0].user_attrs["status"] == "ok"
    oom, skipped = trials[1], trials[2]
    assert oom.user_attrs["config"]["batch_size"] == 128
    assert oom.state == TrialState.PRUNED
    assert oom.user_attrs["status"] == "oom"
    assert oom.constraints["memory"] > 0
    assert not oom.user_attrs.get("skipped")
    assert oom.user_attrs["wall_seconds"] is not None  # it ran

    assert skipped.user_attrs["config"]["batch_size"] == 256
    assert skipped.state == TrialState.PRUNED
    assert skipped.user_attrs["status"] == "oom"
    assert skipped.user_attrs["skipped"] is True
    assert skipped.user_attrs["reason"] == (
        f"not run: batch_size 256 >= 128, which ran out of memory in trial {oom.number} "
        "with the same memory-relevant knobs"
    )
    assert skipped.user_attrs.get("wall_seconds") is None  # no process was started
    assert skipped.constraints["memory"] > 0

    feasible = _records.feasible_trials(trials)
    assert feasible
    assert all(t.user_attrs["config"]["batch_size"] < 128 for t in feasible)
    assert result.best is not None and _records.is_feasible(result.best)
    assert result.best.user_attrs["config"]["batch_size"] < 128


def _child_processes_with(marker: str) -> list[int]:
    """Trial processes (or anything they left) carrying this test's environment marker."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if "autotune.runner._child" not in " ".join(process.info["cmdline"] or ()):
                continue
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get("AUTOTUNE_TEST_MARKER") == marker:
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


def test_search_isolates_aborts_hangs_exits_and_exceptions(storage_url, space_file, fast_measure, monkeypatch):
    marker = uuid.uuid4().hex
    monkeypatch.setenv("AUTOTUNE_TEST_MARKER", marker)  # inherited by every trial process
    space = space_file("effective_batch: free\nknobs: {batch_size: [8, 16, 24, 40, 48]}\n")
    study = _new_study("tiny.misbehaving", storage_url)
    for batch in (16, 24, 40, 48):
        study.enqueue_trial({"batch_size": batch})
    result = search(
        SearchOptions(
            lr_find=False,
            workload=workload_spec("misbehaving"),
            storage=storage_url,
            space=space,
            n_trials=5,
            measure=fast_measure,
            seed=0,
            trial_timeout_seconds=8.0,
        )
    )
    assert result.trials_run == 5
    trials = _by_batch(_load("tiny.misbehaving", storage_url))
    expected = {
        # Crashes are pruned, not failed: TPE then samples away from them.
        16: (TrialState.PRUNED, "error", "trial process died from SIGABRT"),
        24: (TrialState.PRUNED, "timeout", "no result within the trial timeout (8s)"),
        40: (TrialState.PRUNED, "error", "trial process exited with code 3 before reporting a result"),
    }
    for batch, (state, status, reason) in expected.items():
        trial = trials[batch]
        assert (trial.state, trial.user_attrs["status"], trial.user_attrs["reason"]) == (state, status, reason)
    raised = trials[48]
    assert raised.state == TrialState.FAIL
    assert raised.user_attrs["status"] == "error"
    assert re.fullmatch(r"ValueError: bad batch at tiny\.py:\d+", raised.user_attrs["reason"])
    # The baseline (batch 8), enqueued after them, still runs and is the best.
    assert result.baseline is not None and result.baseline.user_attrs["status"] == "ok"
    assert result.best is not None and result.best.number == result.baseline.number
    assert result.status_counts == {"error": 3, "timeout": 1, "ok": 1}
    assert _child_processes_with(marker) == []
    assert os.environ["AUTOTUNE_TEST_MARKER"] == marker


def test_search_prunes_slow_trials_but_never_the_baseline(storage_url, space_file, fast_measure):
    space = space_file("effective_batch: free\nknobs: {batch_size: [8, 256]}\n")
    study = _new_study("tiny", storage_url)
    study.enqueue_trial({"batch_size": 256})  # fast: sets the bar
    study.enqueue_trial({"batch_size": 8})  # the baseline's config, but not the baseline: judged
    search(
        SearchOptions(
            lr_find=False,
            workload=workload_spec(),
            storage=storage_url,
            space=space,
            n_trials=3,
            measure=fast_measure,
            seed=0,
            slow_fraction=0.99,
        )
    )
    fast, slow, baseline = _load("tiny", storage_url).trials
    assert fast.user_attrs["status"] == "ok" and fast.user_attrs["config"]["batch_size"] == 256
    threshold = 0.99 * fast.user_attrs["samples_per_second"]

    assert slow.state == TrialState.PRUNED
    assert slow.user_attrs["status"] == "slow"
    match = re.fullmatch(
        r"(\d+\.\d) samples/s in the first window, below the slow threshold (\d+\.\d)", slow.user_attrs["reason"]
    )
    assert match, slow.user_attrs["reason"]
    assert match.group(2) == f"{threshold:.1f}"
    assert float(match.group(1)) < threshold

    # Same config, below the same threshold, yet measured in full: the baseline has no slow threshold.
    assert baseline.user_attrs["baseline"] is True
    assert baseline.state == TrialState.COMPLETE
    assert baseline.user_attrs["status"] == "ok"
    assert baseline.user_attrs["samples_per_second"] < threshold
    assert len(baseline.user_attrs["window_samples_per_second"]) == fast_measure.windows


def test_search_timeout_stops_the_running_trial_as_timeout(storage_url, space_file, fast_measure):
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


def test_plan_search_on_cpu_drops_cuda_only_values_with_notes(space_file):
    space = space_file(
        "knobs:\n"
        "  precision: {choices: [fp32, tf32, bf16, fp16], default: tf32}\n"
        "  pin_memory: [false, true]\n"
        "  compile: [off, default, reduce-overhead]\n"
        "  gradient_checkpointing: [false, true]\n"
    )
    plan = plan_search(SearchOptions(workload=workload_spec(), space=space, device="cpu"))
    assert plan.device.torch_device == "cpu"
    for note in (
        "precision=tf32 dropped from the search: TF32 matmuls need a CUDA device",
        "precision=fp16 dropped from the search: fp16 training uses a CUDA GradScaler",
        "pin_memory=true dropped from the search: pinned memory only speeds up copies to a CUDA device",
        "compile=reduce-overhead dropped from the search: reduce-overhead relies on CUDA graphs",
        "gradient_checkpointing=true dropped from the search: the workload has no gradient_checkpointing hook "
        "and its model no gradient_checkpointing_enable()",
        "baseline precision=tf32 runs as fp32: TF32 matmuls need a CUDA device",
    ):
        assert note in plan.notes
    assert plan.space.knobs["precision"].choices == ("fp32", "bf16")
    assert plan.space.knobs["pin_memory"].choices == (False,)
    assert plan.space.knobs["compile"].choices == ("off", "default")
    assert plan.baseline.precision == "fp32"
    assert "pin_memory" not in plan.space.searched


def test_search_config_that_crashed_its_process_is_not_run_again(storage_url, space_file, fast_measure, monkeypatch):
    marker = uuid.uuid4().hex
    monkeypatch.setenv("AUTOTUNE_TEST_MARKER", marker)
    space = space_file("effective_batch: free\nknobs: {batch_size: [8, 16]}\n")
    study = _new_study("faults.segfaults", storage_url)
    for _ in range(2):
        study.enqueue_trial({"batch_size": 16})  # segfaults
    options = SearchOptions(
        workload=workload_spec("segfaults", "faults.py"),
        storage=storage_url,
        space=space,
        n_trials=3,
        measure=fast_measure,
        seed=0,
        lr_find=False,
    )
    search(options)
    _load("faults.segfaults", storage_url).enqueue_trial({"batch_size": 16})  # and once more, on resume
    search(SearchOptions(**{**options.__dict__, "n_trials": 1}))

    crashed, again, baseline, resumed = _load("faults.segfaults", storage_url).trials
    assert crashed.state == TrialState.PRUNED
    assert (crashed.user_attrs["status"], crashed.user_attrs["reason"]) == ("error", "trial process died from SIGSEGV")
    assert crashed.user_attrs["crashed"] is True
    assert baseline.user_attrs["baseline"] is True and baseline.user_attrs["status"] == "ok"
    for skipped in (again, resumed):
        assert skipped.user_attrs["config"] == crashed.user_attrs["config"]
        assert skipped.state == TrialState.PRUNED
        assert skipped.user_attrs["skipped"] is True
        assert skipped.user_attrs["reason"] == (
            f"not run: this config crashed its process in trial {crashed.number} (trial process died from SIGSEGV)"
        )
        assert skipped.user_attrs.get("wall_seconds") is None  # no process was started
    assert _child_processes_with(marker) == []


def test_search_a_config_proposed_again_is_answered_from_its_measurement_not_run(storage_url, space_file, fast_measure):
    options = SearchOptions(
        workload=workload_spec(),
        storage=storage_url,
        space=space_file("effective_batch: free\nknobs: {batch_size: [8, 16]}\n"),
        n_trials=1,
        measure=fast_measure,
        seed=0,
        lr_find=False,
    )
    search(options)  # the baseline, batch 8
    for batch in (16, 16, 8):  # 16 twice, then the baseline's own config
        _load("tiny", storage_url).enqueue_trial({"batch_size": batch})
    search(SearchOptions(**{**options.__dict__, "n_trials": 3}))

    trials = _load("tiny", storage_url).trials
    baseline, first, again, baselines_config = trials
    assert baseline.user_attrs["baseline"] is True and baseline.user_attrs["status"] == "ok"
    assert first.user_attrs["status"] == "ok" and first.user_attrs["samples_per_second"] > 0
    for duplicate, measured in ((again, first), (baselines_config, baseline)):
        assert duplicate.state == TrialState.COMPLETE
        assert duplicate.user_attrs["config"] == measured.user_attrs["config"]
        assert (duplicate.user_attrs["status"], duplicate.user_attrs["duplicate_of"]) == ("duplicate", measured.number)
        assert duplicate.value == measured.value and duplicate.constraints == measured.constraints
        assert duplicate.user_attrs["reason"] == (
            f"not run: the same config as trial #{measured.number} ({measured.user_attrs['samples_per_second']:.1f} "
            "samples/s); a sampler may propose a config again"
        )
        assert duplicate.user_attrs.get("wall_seconds") is None  # no process was started
    # Only the measured trials are candidates.
    assert [t.number for t in _records.feasible_trials(trials)] == [baseline.number, first.number]


def test_search_dataloader_worker_killed_by_the_oom_killer_is_oom(storage_url, space_file, fast_measure):
    search(
        SearchOptions(
            workload=workload_spec("worker_killed", "faults.py"),
            storage=storage_url,
            space=space_file("effective_batch: free\nknobs: {batch_size: [4]}\n"),
            n_trials=1,
            measure=fast_measure,
            lr_find=False,
        )
    )
    [trial] = _load("faults.worker_killed", storage_url).trials
    assert trial.state == TrialState.PRUNED
    assert trial.user_attrs["status"] == "oom"
    assert re.fullmatch(
        r"DataLoader worker \(pid \d+\) was killed by SIGKILL \(the host's out-of-memory killer\)",
        trial.user_attrs["reason"],
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"epochs": 0}, "epochs must be a finite number > 0, got 0"),
        ({"epochs": float("inf")}, "epochs must be a finite number > 0, got inf"),
        ({"effective_batch": 0}, "effective_batch must be an integer >= 1, got 0"),
        ({"n_trials": 0}, "n_trials must be an integer >= 1, got 0"),
        ({"memory_headroom": 0.1 * 10}, "memory_headroom must be in [0, 1), got 1.0"),
        ({"timeout_seconds": -5.0}, "timeout_seconds must be a finite number > 0, got -5.0"),
    ],
)
def test_search_options_out_of_range_name_the_parameter_not_a_cli_option(options, message):
    with pytest.raises(UsageError) as info:
        SearchOptions(**options)
    assert str(info.value) == message


def test_plan_search_drops_channels_last_for_a_model_without_2d_convolutions():
    plan = plan_search(SearchOptions(workload=workload_spec()))  # tiny: a linear model
    assert (
        "channels_last=true dropped from the search: the model has no 2-D convolutions for channels_last to "
        "speed up" in plan.notes
    )
    assert plan.space.knobs["channels_last"].choices == (False,)
    demo = plan_search(SearchOptions())  # a CNN keeps it
    assert not any(note.startswith("channels_last") for note in demo.notes)


def test_plan_search_drops_more_workers_than_cores(monkeypatch, space_file):
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    plan = plan_search(
        SearchOptions(workload=workload_spec(), space=space_file("knobs:\n  num_workers: [0, 2, 3, 8]\n"))
    )
    assert plan.space.knobs["num_workers"].choices == (0, 2)
    assert "num_workers=3 dropped from the search: more DataLoader workers than this machine's 2 cores" in plan.notes
    assert "num_workers=8 dropped from the search: more DataLoader workers than this machine's 2 cores" in plan.notes


def test_search_remeasures_the_winner_and_the_baseline_side_by_side(storage_url, space_file, fast_measure):
    from autotune.export._export import export_best

    space = space_file("effective_batch: free\nknobs: {batch_size: [256]}\n")
    # Ranked by throughput: tiny's full run is a fraction of a second, so by projected time the two
    # configs differ by less than the noise of their warm-ups, and the baseline is kept.
    result = search(
        SearchOptions(
            workload=workload_spec(),
            storage=storage_url,
            space=space,
            n_trials=2,
            measure=fast_measure,
            lr_find=False,
            slow_fraction=0.0,
            objective="throughput",
        )
    )
    study = _load("tiny", storage_url)
    paired = study.user_attrs["paired"]
    assert result.paired == paired
    assert (paired["trial"], paired["baseline_trial"]) == (1, 0)
    assert [row["trial"] for row in paired["rounds"]] == [1, 0]
    # At least PAIRED_ROUNDS; more only while the speedup's noise is above PAIRED_NOISE and more
    # rounds could still change the verdict.
    from autotune.study._paired import PAIRED_MAX_ROUNDS, PAIRED_ROUNDS, paired_settled
    from autotune.study._selection import Candidate

    rounds = len(paired["rounds"][0]["samples_per_second"])
    assert len(paired["rounds"][1]["samples_per_second"]) == rounds
    assert PAIRED_ROUNDS <= rounds <= PAIRED_MAX_ROUNDS
    figures = [
        Candidate(
            number=n,
            attrs={},
            samples_per_second=paired[prefix + "samples_per_second"],
            spread=paired[prefix + "spread"],
            peak_memory_bytes=None,
            window_spread=paired[prefix + "window_spread"],
        )
        for n, prefix in ((1, ""), (0, "baseline_"))
    ]
    assert rounds == PAIRED_MAX_ROUNDS or paired_settled(figures)
    assert paired["speedup"] == pytest.approx(paired["samples_per_second"] / paired["baseline_samples_per_second"])
    assert study.user_attrs["search_seconds"] == pytest.approx(result.seconds)
    export = export_best("tiny", storage_url)
    assert export.document["measured"]["samples_per_second"] == paired["samples_per_second"]
    assert export.document["payoff"]["search_seconds"] >= result.seconds
    if export.document["provenance"]["trial"] == 1:
        assert (
            f"measured side by side at the end of the search ({rounds} interleaved rounds in fresh processes): "
            f"trial #1 {paired['speedup']:.2f}x the baseline (#0), ±{paired['noise']:.1%} noise" in export.explanation
        )


def test_paired_remeasurement_is_skipped_when_the_time_budget_is_spent(storage_url, space_file, fast_measure):
    import time

    from autotune.study._paired import remeasure_best

    space = space_file("effective_batch: free\nknobs: {batch_size: [256]}\n")
    search(
        SearchOptions(
            workload=workload_spec(),
            storage=storage_url,
            space=space,
            n_trials=2,
            measure=fast_measure,
            lr_find=False,
            slow_fraction=0.0,
        )
    )
    study = _load("tiny", storage_url)
    best, baseline = study.trials[1], study.trials[0]
    paired, notes = remeasure_best(study, best, baseline, SearchOptions(), deadline=time.monotonic() + 1)
    assert paired is None
    assert notes == [
        "the winner and the baseline were not re-measured side by side: the time budget is spent "
        "(export-best --verify 1 does it)"
    ]


def test_a_single_figure_beyond_the_re_measured_winner_is_re_measured_beside_it(storage_url, space_file, fast_measure):
    """The search and the export name the same trial: one that export-best would take over the
    re-measured winner on a lone figure is re-measured beside the winner and the baseline first."""
    from autotune.export._export import export_best
    from autotune.study._paired import remeasure_best

    search(
        SearchOptions(
            workload=workload_spec(),
            storage=storage_url,
            space=space_file("effective_batch: free\nknobs: {batch_size: [256]}\n"),
            n_trials=2,
            measure=fast_measure,
            lr_find=False,
            slow_fraction=0.0,
            objective="throughput",
        )
    )
    study = _load("tiny", storage_url)
    baseline, winner = study.trials[0], study.trials[1]
    # Trial #2 read 50x too high once (a lucky window): far beyond any noise.
    lucky = dict(winner.user_attrs, config=TrainConfig(batch_size=64).to_dict())
    for key in ("samples_per_second", "unit_per_second"):
        if lucky.get(key):
            lucky[key] *= 50
    study.add_trial(
        optuna.trial.create_trial(state=TrialState.COMPLETE, value=lucky["samples_per_second"], user_attrs=lucky)
    )
    _kept_recipe_checks(study, 1, 2)  # both change the recipe's batch: candidates once a recipe check keeps them
    paired, notes = remeasure_best(study, winner, baseline, SearchOptions(), deadline=None)

    assert [row["trial"] for row in paired["rounds"]] == [2, 1, 0]  # side by side, the challenger first
    assert paired["challengers"] == [2]
    assert {row["trial"] for row in paired["figures"]} == {0, 1, 2}
    assert paired["trial"] in (1, 2) and paired["baseline_trial"] == 0
    again = next(row for row in paired["figures"] if row["trial"] == 2)["samples_per_second"]
    assert again < lucky["samples_per_second"] / 5  # its own figure now, not the lucky one
    assert len(notes) == 1 and re.fullmatch(
        rf"trial #2 measured {_records.rate(study.trials[2]):.1f} samples/s once, beyond the noise of trial #1's "
        r"[0-9.]+ side by side: re-measured beside the two",
        notes[0],
    ), notes
    export = export_best("tiny", storage_url)
    exported = export.document["provenance"]["trial"]
    assert exported in (paired["trial"], 0)  # never #2 on its lone figure
    figures = {row["trial"]: row["samples_per_second"] for row in paired["figures"]}
    assert export.document["measured"]["samples_per_second"] == figures[exported]
    assert any(
        line.startswith("measured faster than the search's first pick once") and "trial #2" in line
        for line in export.explanation
    )


def _recorded(storage_url: str, rates: dict[int, float]) -> optuna.Study:
    """A study whose trials measured ``rates`` once (#0 the baseline), with a complete setup."""
    study = optuna.create_study(study_name="challenged", storage=open_storage(storage_url), direction="maximize")
    study.set_user_attr("objective", "throughput")
    study.set_user_attr("workload", "tests/workloads/tiny.py:workload")
    for number, rate in rates.items():
        attrs = {
            "config": TrainConfig(batch_size=8 + number).to_dict(),
            "status": "ok",
            "samples_per_second": rate,
            "throughput_cv": 0.01,
            "peak_memory_bytes": 2**20,
            "wall_seconds": 1.0,
        }
        if number == 0:
            attrs["baseline"] = True
        study.add_trial(optuna.trial.create_trial(state=TrialState.COMPLETE, value=rate, user_attrs=attrs))
    return study


def _fake_verify(monkeypatch, calls: list[list[int]], *rounds: dict[int, float]):
    """``autotune.study._verify.verify`` answering each call with the next figures (spread 1%); the trials
    each call re-measured, in order, go into ``calls``."""
    import dataclasses

    from autotune.study import _verify as verify_module

    answers = iter(rounds)

    def fake(candidates, setup, **_kwargs):
        figures = next(answers)
        calls.append([c.number for c in candidates])
        measured = [
            dataclasses.replace(c, samples_per_second=figures[c.number], spread=0.01, window_spread=0.01)
            for c in candidates
        ]
        table = [{"trial": c.number, "samples_per_second": [figures[c.number]] * 2} for c in candidates]
        return verify_module.Verification(candidates=measured, rounds=table, seconds=1.0)

    monkeypatch.setattr(verify_module, "verify", fake)


def test_each_challenger_is_re_measured_beside_the_current_winner_and_the_baseline(storage_url, monkeypatch):
    from autotune.study._paired import remeasure_best

    # Measured once: #3 and #2 far above the rest.
    study = _recorded(storage_url, {0: 1000.0, 1: 1200.0, 2: 2000.0, 3: 3000.0})
    calls: list[list[int]] = []
    _fake_verify(
        monkeypatch,
        calls,
        {1: 1200.0, 0: 1000.0},  # #3's lone 3000 is beyond #1's noise: re-measure it
        {3: 1300.0, 1: 1250.0, 0: 1000.0},  # #3 wins side by side; #2's lone 2000 is next
        {2: 1280.0, 3: 1310.0, 0: 1000.0},
    )  # #3 stays ahead: settled
    paired, notes = remeasure_best(study, study.trials[1], study.trials[0], SearchOptions(), deadline=None)
    assert calls == [[1, 0], [3, 1, 0], [2, 3, 0]]
    assert (paired["trial"], paired["samples_per_second"], paired["challengers"]) == (3, 1310.0, [3, 2])
    assert {row["trial"]: row["samples_per_second"] for row in paired["figures"]} == {
        0: 1000.0,
        1: 1250.0,
        2: 1280.0,
        3: 1310.0,
    }
    assert notes == [
        "trial #3 measured 3000.0 samples/s once, beyond the noise of trial #1's 1200.0 side by side: "
        "re-measured beside the two",
        "trial #2 measured 2000.0 samples/s once, beyond the noise of trial #3's 1300.0 side by side: "
        "re-measured beside the two",
    ]
    assert study.user_attrs["paired"] == paired


def test_when_nothing_beats_the_baseline_side_by_side_the_next_faster_trial_is_re_measured(storage_url, monkeypatch):
    from autotune.export._export import export_best
    from autotune.study._paired import remeasure_best
    from autotune.study._selection import paired_lines

    # #1 read fastest once; #2 read 2% above the baseline once, within the noise (a slow process
    # may have read it low).
    study = _recorded(storage_url, {0: 1000.0, 1: 1300.0, 2: 1020.0, 3: 900.0})
    calls: list[list[int]] = []
    _fake_verify(
        monkeypatch,
        calls,
        {1: 1010.0, 0: 1000.0},  # #1 is no faster side by side
        {2: 1200.0, 0: 1000.0},
    )  # #2 is, beyond the noise: settled
    paired, notes = remeasure_best(study, study.trials[1], study.trials[0], SearchOptions(), deadline=None)
    assert calls == [[1, 0], [2, 0]]  # #3 read below the baseline: never re-measured
    assert (paired["trial"], paired["speedup"], paired["runners_up"]) == (2, 1.2, [2])
    assert {row["trial"]: row["samples_per_second"] for row in paired["figures"]} == {0: 1000.0, 1: 1010.0, 2: 1200.0}
    assert notes == [
        "trial #1 was no faster than the baseline side by side; trial #2, 1020.0 samples/s once against "
        "the baseline's 1000.0, is next: re-measured beside the baseline"
    ]
    assert paired_lines(paired)[-1] == (
        "re-measured next, as the trials before them were no faster than the baseline "
        "side by side: trial #2 (1200.0 samples/s)"
    )
    assert export_best("challenged", storage_url).document["provenance"]["trial"] == 2


def test_figures_from_different_rounds_compare_as_speedups_over_their_rounds_baseline(storage_url, monkeypatch):
    from autotune.study._paired import remeasure_best
    from autotune.study._selection import Candidate, with_paired

    study = _recorded(storage_url, {0: 1300.0, 1: 1700.0, 2: 1450.0})
    calls: list[list[int]] = []
    _fake_verify(
        monkeypatch,
        calls,
        {1: 1605.0, 0: 1600.0},  # a fast spell of the machine: #1 1.00x
        {2: 1394.0, 0: 1160.0},
    )  # a slow one: #2 1.20x, below #1's raw figure
    paired, notes = remeasure_best(study, study.trials[1], study.trials[0], SearchOptions(), deadline=None)
    assert calls == [[1, 0], [2, 0]]  # #1's 1605 is not taken for faster than #2's 1394: no third round
    assert paired["trial"] == 2 and len(notes) == 1
    pool = {
        c.number: c.samples_per_second for c in with_paired([Candidate.from_trial(t) for t in study.trials], paired)
    }
    assert pool == pytest.approx({0: 1160.0, 1: 1605.0 * 1160.0 / 1600.0, 2: 1394.0})


def test_no_trial_is_re_measured_next_when_none_read_faster_than_the_baseline(storage_url, monkeypatch):
    from autotune.study._paired import remeasure_best

    study = _recorded(storage_url, {0: 1000.0, 1: 1300.0, 2: 950.0})
    calls: list[list[int]] = []
    _fake_verify(monkeypatch, calls, {1: 1005.0, 0: 1000.0})
    paired, notes = remeasure_best(study, study.trials[1], study.trials[0], SearchOptions(), deadline=None)
    assert (calls, notes, paired["trial"]) == ([[1, 0]], [], 1)
    assert "runners_up" not in paired


def test_the_searchs_best_is_never_a_trial_that_ran_the_baselines_config(storage_url):
    from autotune.store import _records

    study = _recorded(storage_url, {0: 1000.0, 1: 900.0})
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


def test_challengers_stop_at_the_cap_and_an_earlier_figure_counts_as_measured_once_more(storage_url, monkeypatch):
    from autotune.study._paired import PAIRED_CHALLENGERS, remeasure_best

    study = _recorded(storage_url, {0: 1000.0, 1: 1200.0, 2: 2000.0, 3: 3000.0})
    calls: list[list[int]] = []
    _fake_verify(
        monkeypatch, calls, {1: 1200.0, 0: 1000.0}, {3: 1300.0, 1: 1250.0, 0: 1000.0}, {2: 900.0, 3: 950.0, 0: 800.0}
    )  # the machine slowed: #3 reads 1.19x, #1 read 1.25x before
    paired, notes = remeasure_best(study, study.trials[1], study.trials[0], SearchOptions(), deadline=None)
    assert len(calls) == 1 + PAIRED_CHALLENGERS == 3  # #1 would be next, but the cap is reached
    assert paired["trial"] == 3 and paired["challengers"] == [3, 2]
    assert notes[2] == (
        "trial #1 measured 1.25x the baseline in an earlier re-measurement, beyond the noise of trial "
        "#3's 1.19x side by side; not re-measured, as 2 challengers were already (export-best "
        "--verify 3 re-measures the top 3)"
    )


@pytest.fixture
def study_with_a_winner(storage_url):
    """A study whose only trial (#0) finished fine with the default config."""
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name="lr-once", storage=storage, direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.COMPLETE, value=1.0, user_attrs={"config": TrainConfig().to_dict(), "status": "ok"}
        )
    )
    return study, storage, study.trials[0]


def test_search_lr_find_runs_in_one_search_at_a_time(study_with_a_winner):
    study, storage, best = study_with_a_winner
    elsewhere = SearchProcess(host="gpu-node-7", machine="another-machine", pid=4242, started=1.0)
    study_id = storage.get_study_id_from_name(study.study_name)
    storage.set_study_system_attr(study_id, elsewhere.key, {**elsewhere.to_json(), "heartbeat": time.time()})
    study.set_user_attr("lr_find_running", {"host": "gpu-node-7", "pid": 4242, "trial": 0, "process": elsewhere.key})

    result, notes = run_lr_find(study, storage, best, SearchOptions(), SearchListener(), None, SearchProcess.current())
    assert result is None
    assert notes == ["the LR range test is running in another search (pid 4242 on gpu-node-7), on trial #0"]
    assert "lr_find" not in study.user_attrs  # it did not run here


def test_search_lr_find_result_for_the_winners_batch_and_precision_stands(study_with_a_winner):
    study, storage, best = study_with_a_winner
    earlier = LRFindResult(
        config=TrainConfig().to_dict(),
        lrs=[1e-3, 1e-2],
        losses=[1.0, 0.5],
        smoothed=[1.0, 0.5],
        stopped_early=False,
        suggestion=2e-3,
        lr_at_min_loss=1e-2,
        lr_steepest=2e-3,
        centre_lr=1e-3,
        trial=0,
    )
    study.set_user_attr("lr_find", {"0": earlier.to_json()})

    result, notes = run_lr_find(study, storage, best, SearchOptions(), SearchListener(), None, SearchProcess.current())
    assert result == earlier
    assert notes == [
        "the LR range test ran before on trial #0, with this effective batch and precision; its suggestion stands"
    ]
