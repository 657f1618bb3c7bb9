"""autotune.study._objective: one Optuna trial per measured run: what it is given (the slow threshold, the
rank to beat, the noise measurement), what it skips without a process (proven out of memory, crashed,
failed to compile, measured before), and how its outcome is recorded (figures, constraints, verdict).

The tests of what crashes, hangs or runs out of memory run real trial processes on the tiny workloads; the
tests of decisions that turn on figures answer their trials from set figures (conftest's set_figures).
"""

from __future__ import annotations

import os
import re
import uuid

import optuna
import psutil
import pytest
from conftest import FAST, measured_outcome, workload_spec
from optuna.trial import TrialState

from autotune.knobs._config import FIELD_NAMES
from autotune.knobs._units import format_size
from autotune.runner import Status, TrialOutcome
from autotune.store import _records
from autotune.store._storage import open_storage
from autotune.study._budget import Budgets
from autotune.study._loop import search
from autotune.study._objective import BASELINE_NOISE_WINDOWS
from autotune.study._options import SearchOptions

MiB = 1024**2

MEASURED_ATTRS = (
    "status",
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


def _options(storage_url, space, fast_measure, **overrides) -> SearchOptions:
    values = dict(workload=workload_spec(), storage=storage_url, space=space, measure=fast_measure, lr_find=False)
    return SearchOptions(**{**values, **overrides})


# --- the shared tiny study: trials measured in their processes -------------------------------------------


def test_search_finished_trials_record_every_measured_user_attribute(tiny_study):
    study = _load("tiny", tiny_study["storage"])
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) >= 3
    for trial in finished:
        missing = [key for key in MEASURED_ATTRS if key not in trial.user_attrs]
        assert missing == [], f"trial {trial.number} lacks {missing}"
        assert set(trial.user_attrs["config"]) == set(FIELD_NAMES)
        assert trial.user_attrs["status"] == "ok"
        assert trial.user_attrs.get("reason", "") == ""  # an ok trial has none to give
        assert trial.user_attrs["device"] == "cpu"
        assert trial.user_attrs["samples_per_second"] > 0
        # The objective: the full run's projected time (its steady part, warm-up included).
        assert trial.values == [trial.user_attrs["projected_full_run_seconds"]]


def test_search_intermediate_values_hold_per_window_projections(tiny_study):
    trials = _by_batch_all(tiny_study)
    assert trials
    for trial in trials:
        windows = trial.user_attrs["window_samples_per_second"]
        assert len(windows) == FAST.windows
        assert sorted(trial.intermediate_values) == list(range(FAST.windows))
        # tiny's two epochs at each window's rate, x the samples this trial's effective batch takes to the
        # recipe's progress (by the noise scale known when it started): one factor for all its windows.
        samples = trial.user_attrs["dataset_size"] * 2
        factors = [
            value * rate / samples
            for (_, value), rate in zip(sorted(trial.intermediate_values.items()), windows, strict=True)
        ]
        assert factors == pytest.approx([factors[0]] * len(factors), rel=1e-4)
        if _records.effective_batch_of(trial) == 16:  # the recipe's: 8 x 2
            assert factors[0] == pytest.approx(1.0, rel=1e-4)


# --- what crashes, hangs or runs out of memory: real trial processes -------------------------------------


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
        slow_fraction=0.0,  # measured in full whatever the machine's load: this is about duplicates
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


# --- decisions on set figures ----------------------------------------------------------------------------


def test_search_prunes_slow_trials_but_never_the_baseline(storage_url, space_file, fast_measure, set_figures):
    # Set figures, not this machine's speed: bf16 reads 1000 samples/s, fp32 (the baseline's) 400.
    runs = set_figures(lambda job: {"bf16": 1000.0, "fp32": 400.0}[job.config["precision"]])
    space = space_file("knobs: {precision: [fp32, bf16]}\n")
    study = _new_study("tiny", storage_url)
    study.enqueue_trial({"precision": "bf16"})  # fast: sets the bar
    study.enqueue_trial({"precision": "fp32"})  # the baseline's config, but not the baseline: judged
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
    assert fast.user_attrs["status"] == "ok" and fast.user_attrs["config"]["precision"] == "bf16"
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
    # The thresholds the runner was given (after the workload's check): none before a trial ran fine, the
    # slow fraction of the fastest after it, none for the baseline.
    assert [call["slow_below"] for call in runs.calls[1:4]] == [None, pytest.approx(threshold), None]


def test_a_trial_measures_the_noise_scale_where_the_ranking_needs_it_and_is_ranked_against_the_best(
    storage_url, space_file, fast_measure, set_figures
):
    runs = set_figures(lambda job: {8: 1000.0, 16: 1500.0, 32: 900.0}[job.config["batch_size"]])
    study = _new_study("tiny", storage_url)
    for batch in (16, 32):
        study.enqueue_trial({"batch_size": batch})
    space = space_file("effective_batch: free\nknobs: {batch_size: [8, 16, 32]}\n")
    search(_options(storage_url, space, fast_measure, n_trials=3, slow_fraction=0.0))
    # After the workload's check: #0 at batch 16 (nothing measured before it), #1 at 32, the baseline.
    jobs = runs.jobs()[1:4]
    assert [job.config["batch_size"] for job in jobs] == [16, 32, 8]
    # The effective batch is free: every trial measures the noise scale (the ranking projects by it) for a
    # window's time, the baseline for longer (the export states its figure).
    window = fast_measure.window_seconds
    assert [job.noise_seconds for job in jobs] == pytest.approx([window, window, BASELINE_NOISE_WINDOWS * window])
    # Each trial's windows stop once they tell it apart from the fastest trial so far.
    assert [job.rank_against for job in jobs] == [None, pytest.approx(1500.0), pytest.approx(1500.0)]


def test_a_trial_at_the_recipes_effective_batch_measures_no_noise_scale_but_the_baseline_does(
    storage_url, space_file, fast_measure, set_figures
):
    runs = set_figures(lambda job: 1000.0)
    study = _new_study("tiny", storage_url)
    study.enqueue_trial({"precision": "bf16"})
    search(_options(storage_url, space_file("knobs: {precision: [fp32, bf16]}\n"), fast_measure, n_trials=2))
    trial, baseline = runs.jobs()[1:3]
    assert (trial.config["precision"], trial.noise_seconds) == ("bf16", None)
    assert baseline.noise_seconds == pytest.approx(BASELINE_NOISE_WINDOWS * fast_measure.window_seconds)


def test_a_peak_within_the_budget_but_above_the_headroom_is_out_of_memory(
    storage_url, space_file, fast_measure, set_figures
):
    budget = 1000 * MiB
    peak = 950 * MiB  # the runner lets it finish (below the budget); the limit keeps 10% headroom
    set_figures(
        lambda job: measured_outcome(job, 1000.0, peak_memory_bytes=peak if job.config["precision"] == "bf16" else MiB)
    )
    study = _new_study("tiny", storage_url)
    study.enqueue_trial({"precision": "bf16"})
    space = space_file("knobs: {precision: [fp32, bf16]}\n")
    search(_options(storage_url, space, fast_measure, n_trials=2, max_memory_bytes=budget))
    over, baseline = _load("tiny", storage_url).trials
    limit = Budgets(memory_budget_bytes=budget)
    assert over.state == TrialState.PRUNED
    assert (over.user_attrs["status"], over.user_attrs["reason"]) == (
        "oom",
        f"peak memory {format_size(peak)} is above {limit.describe_memory_limit()}",
    )
    assert over.constraints["memory"] == pytest.approx(peak / limit.memory_limit_bytes - 1)
    assert baseline.state == TrialState.COMPLETE and baseline.constraints["memory"] < 0


def test_a_compile_mode_that_fails_on_the_workload_is_not_run_again(storage_url, space_file, fast_measure, set_figures):
    def answer(job):
        if job.config["compile"] == "default":
            return TrialOutcome(
                status=Status.ERROR,
                reason="BackendCompilerFailed: backend='inductor' raised: CppCompileError",
                log_tail='File "torch/_inductor/codecache.py", line 1, in compile',
            )
        return 1000.0

    runs = set_figures(answer)
    study = _new_study("tiny", storage_url)
    study.enqueue_trial({"compile": "default", "batch_size": 16})
    study.enqueue_trial({"compile": "default", "batch_size": 32})  # another config, the same compile mode
    space = space_file("effective_batch: free\nknobs: {compile: [off, default], batch_size: [8, 16, 32]}\n")
    search(_options(storage_url, space, fast_measure, n_trials=3))
    failed, skipped, baseline = _load("tiny", storage_url).trials
    assert failed.state == TrialState.PRUNED  # pruned, not failed: the sampler learns to avoid it
    assert (failed.user_attrs["compile_failed"], failed.user_attrs["crashed"]) == (True, True)
    assert skipped.state == TrialState.PRUNED and skipped.user_attrs["skipped"] is True
    assert skipped.user_attrs["reason"] == (
        f"not run: compile mode default failed on this workload in trial {failed.number} "
        "(BackendCompilerFailed: backend='inductor' raised: CppCompileError)"
    )
    assert baseline.user_attrs["status"] == "ok"
    assert [job.config["batch_size"] for job in runs.jobs()[1:3]] == [16, 8]  # #1 started no process


def test_a_full_run_projected_past_the_deadline_is_a_constraint_not_a_failure(
    storage_url, space_file, fast_measure, set_figures
):
    set_figures(lambda job: 100.0)  # tiny's 2 epochs of 512 samples: about 10 s
    search(
        _options(storage_url, space_file("knobs: {batch_size: [8]}\n"), fast_measure, n_trials=1, deadline_seconds=5.0)
    )
    [baseline] = _load("tiny", storage_url).trials
    projected = baseline.user_attrs["projected_full_run_seconds"]
    assert projected == pytest.approx(2 * 512 / 100.0 + 0.01)  # the samples at the rate, and the warm-up
    assert baseline.state == TrialState.COMPLETE and baseline.values == [pytest.approx(projected)]
    assert baseline.constraints["deadline"] == pytest.approx(projected / 5.0 - 1)
    assert baseline.user_attrs["status"] == "ok" and not _records.is_feasible(baseline)
    assert baseline.user_attrs["reason"] == "projected full run 10.2s misses 5.0s (the deadline 5.0s)"


@pytest.mark.parametrize("pruning", [True, False])
def test_the_studys_pruner_stops_a_trial_below_the_median_unless_pruning_is_off(
    storage_url, space_file, fast_measure, set_figures, pruning
):
    set_figures(lambda job: 10.0 if job.config["batch_size"] == 64 else 1000.0)
    batches = (9, 10, 11, 12, 13, 64)  # five trials to start the pruner, then a slow one
    study = _new_study("tiny", storage_url)
    for batch in batches:
        study.enqueue_trial({"batch_size": batch})
    space = space_file(f"effective_batch: free\nknobs: {{batch_size: [8, {', '.join(map(str, batches))}]}}\n")
    options = _options(
        storage_url,
        space,
        fast_measure,
        n_trials=6,
        objective="throughput",
        slow_fraction=0.0,
        pruning=pruning,
        sampler="tpe",  # TPE's pruner: Optuna's median rule
    )
    search(options)
    slow = _load("tiny", storage_url).trials[5]
    assert slow.user_attrs["config"]["batch_size"] == 64
    if pruning:
        assert slow.state == TrialState.PRUNED
        assert (slow.user_attrs["status"], slow.user_attrs["reason"]) == (
            "slow",
            "pruned by the study's pruner after window 2 at 10.1 samples/s",
        )
    else:
        assert slow.state == TrialState.COMPLETE and slow.user_attrs["status"] == "ok"
        assert len(slow.user_attrs["window_samples_per_second"]) == fast_measure.windows


def test_a_trial_running_when_the_search_is_stopped_is_marked_interrupted(
    storage_url, space_file, fast_measure, set_figures
):
    def answer(job):
        if job.config["precision"] == "bf16":
            raise KeyboardInterrupt  # Ctrl-C while the trial runs
        return 1000.0

    set_figures(answer)
    study = _new_study("tiny", storage_url)
    study.enqueue_trial({"precision": "bf16"})
    with pytest.raises(KeyboardInterrupt):
        search(_options(storage_url, space_file("knobs: {precision: [fp32, bf16]}\n"), fast_measure, n_trials=2))
    trials = _load("tiny", storage_url).trials
    stopped = trials[0]
    assert stopped.state == TrialState.FAIL
    assert (stopped.user_attrs["status"], stopped.user_attrs["reason"]) == (
        "interrupted",
        "the search was stopped (Ctrl-C) while this trial ran; its config runs again",
    )
    again = [t for t in trials if t.state == TrialState.WAITING and t.user_attrs.get("retry_of") == stopped.number]
    assert len(again) == 1  # its config, queued to run again


def test_a_search_process_rewrites_the_study_note_after_its_first_trial_then_at_most_every_30_s(monkeypatch):
    from autotune.study import _objective

    written = []
    clock = {"now": 1000.0}
    monkeypatch.setattr(_objective, "explain_study", lambda study, figures, trials: written.append(figures))
    monkeypatch.setattr(_objective.time, "monotonic", lambda: clock["now"])
    objective = _objective.Objective(SearchOptions(), None, None, None)  # type: ignore[arg-type]

    def trial_ends(after_seconds: float) -> None:
        clock["now"] += after_seconds
        objective.trials_run += 1
        objective._explain(None, [])

    trial_ends(0.0)  # the first trial: the note is written, without figures (fewer than FIGURE_EVERY trials)
    for _ in range(4):
        trial_ends(5.0)  # many workers' trials end every few seconds: no rewrite within NOTE_EVERY_SECONDS
    assert written == [False]
    trial_ends(_objective.NOTE_EVERY_SECONDS)  # trial 6: the note again, and the figures (5 trials since)
    trial_ends(_objective.NOTE_EVERY_SECONDS)
    assert written == [False, True, False]
