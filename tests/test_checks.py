"""Workload bugs refused in one line: by the check before the study, and when the first trials all fail alike."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from conftest import WORKLOADS, run_cli, workload_spec
from optuna.trial import TrialState

from autotune.exceptions import WorkloadError
from autotune.study._checks import RepeatedErrors
from autotune.study._loop import search
from autotune.study._options import SearchListener, SearchOptions

SPACE = "knobs: {batch_size: [8, 16, 32]}\n"


def _options(name: str, storage: str, space: Path, fast_measure, **extra) -> SearchOptions:
    return SearchOptions(
        workload=workload_spec(name, "faults.py"),
        storage=storage,
        space=space,
        n_trials=4,
        measure=fast_measure,
        seed=0,
        slow_fraction=0.0,
        lr_find=False,
        **extra,
    )


@pytest.mark.parametrize(
    ("name", "message", "batch"),
    [
        ("non_scalar_loss", re.escape("loss must return a scalar tensor, got shape (32,)"), 32),
        ("float_loss", r"loss must return a scalar tensor, got float 0\.\d+", 8),
        ("small_dataset", re.escape("dataset has 10 samples, fewer than batch_size 32"), 32),
    ],
)
def test_search_workload_bug_is_refused_before_the_study(name, message, batch, storage_url, space_file, fast_measure):
    options = _options(name, storage_url, space_file(SPACE), fast_measure)
    with pytest.raises(WorkloadError) as info:
        search(options)
    where = re.escape(f" (its first training step, at the baseline's batch_size {batch})")
    assert re.fullmatch(re.escape(f"workload {options.workload!r}: ") + message + where, str(info.value)), info.value
    assert not Path(storage_url.removeprefix("sqlite:///")).exists()  # no study, no database


def test_cli_search_workload_bug_is_one_line_and_a_non_zero_exit(tmp_path):
    storage = f"sqlite:///{tmp_path}/studies/x.db"
    result = run_cli("search", "--workload", workload_spec("non_scalar_loss", "faults.py"), "--storage", storage)
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        "checking the workload: its first training step at the baseline (batch_size 32) ...",
        f"Error: workload '{WORKLOADS / 'faults.py'}:non_scalar_loss': loss must return a scalar tensor, "
        "got shape (32,) (its first training step, at the baseline's batch_size 32)",
    ]
    assert not (tmp_path / "studies").exists()


def test_search_first_trials_failing_alike_stop_the_search_with_a_summary(storage_url, space_file, fast_measure):
    options = _options("fails_after_two_steps", storage_url, space_file(SPACE), fast_measure)
    with pytest.raises(WorkloadError) as info:
        search(options)
    assert re.fullmatch(
        r"the search stopped: its first 3 trials \(#0, #1, #2\) all failed with the same error: "
        r"ValueError: labels out of range for 2 classes at faults\.py:\d+",
        str(info.value),
    ), str(info.value)
    trials = optuna.load_study(study_name="faults.fails_after_two_steps", storage=storage_url).trials
    assert len(trials) == 3  # of the 4 asked for
    assert trials[0].user_attrs["baseline"] is True
    assert [(t.state, t.user_attrs["status"]) for t in trials] == [(TrialState.FAIL, "error")] * 3


class _Counting(SearchListener):
    def __init__(self) -> None:
        self.checks = 0

    def on_workload_check(self, plan) -> None:
        self.checks += 1


def test_search_resumed_study_with_a_measured_baseline_skips_the_check(storage_url, space_file, fast_measure):
    # batch 4 is slower than the baseline's 8: the baseline stays the winner, with nothing to re-measure
    space = space_file("knobs: {batch_size: [4]}\n")
    options = SearchOptions(
        workload=workload_spec(),
        storage=storage_url,
        space=space,
        n_trials=1,
        measure=fast_measure,
        seed=0,
        lr_find=False,
    )
    listener = _Counting()
    search(options, listener)
    assert listener.checks == 1
    search(options, listener)
    assert listener.checks == 1


def test_repeated_errors_need_three_failures_with_one_message():
    same = RepeatedErrors()
    assert not same.add(0, "error", "ValueError: x")
    assert not same.add(1, "error", "ValueError: x")
    assert same.add(2, "error", "ValueError: x")

    mixed = RepeatedErrors()
    for number, (status, reason) in enumerate([("error", "A"), ("ok", ""), ("error", "A"), ("error", "A")]):
        assert not mixed.add(number, status, reason)

    different = RepeatedErrors()
    for number, reason in enumerate(["A", "B", "A"]):
        assert not different.add(number, "error", reason)


# --- an optimizer that wants a closure it was not told about ----------------------------------------


def test_search_steps_a_sam_optimizer_with_a_closure_when_the_workload_does_not_say_so(storage_url, fast_measure):
    """SAM as users write it asserts that its step got a closure: the first step finds that, runs it with
    one, and every trial steps it so, with no trial error; the note says why."""
    notes = []

    class Listener(SearchListener):
        def on_plan(self, plan) -> None:
            notes.extend(plan.notes)

    options = SearchOptions(
        workload=workload_spec("unflagged", "sam.py"),
        storage=storage_url,
        n_trials=3,
        measure=fast_measure,
        seed=0,
        lr_find=False,
        effective_batch="free",
    )
    search(options, Listener())
    study = optuna.load_study(study_name="sam.unflagged", storage=storage_url)
    assert [t.user_attrs.get("status") for t in study.trials if t.user_attrs.get("status") == "error"] == []
    assert study.trials[0].user_attrs["status"] == "ok"
    assert study.user_attrs["step_closure"] is True
    assert (
        "the optimizer's step failed without a closure (AssertionError: SAM requires a closure at sam.py:46) "
        "and ran with one: every trial and the full run step it with a closure that re-evaluates the loss "
        "(as Workload(step_closure=True) does)"
    ) in notes


def test_export_and_train_step_the_found_closure(storage_url, fast_measure, tmp_path):
    from autotune.export._export import export_best
    from autotune.training._full_run import train
    from autotune.training._run_plan import TrainOptions

    search(
        SearchOptions(
            workload=workload_spec("unflagged", "sam.py"),
            storage=storage_url,
            n_trials=1,
            measure=fast_measure,
            seed=0,
            lr_find=False,
        )
    )
    out = tmp_path / "best.yaml"
    document = export_best("sam.unflagged", storage_url, out).document
    assert document["provenance"]["step_closure"] is True
    script = export_best("sam.unflagged", storage_url, tmp_path / "train.py", "torch").path.read_text()
    assert "STEP_CLOSURE = True" in script
    record = train(
        TrainOptions(
            config=out, steps=5, checkpoint_dir=tmp_path / "ck", checkpoint_every_seconds=None, write_back=False
        )
    )
    assert (record.status, record.steps) == ("finished", 5)


def test_search_optimizer_step_failing_with_a_closure_too_is_refused_naming_the_flag(storage_url, fast_measure):
    options = SearchOptions(
        workload=workload_spec("broken_step", "sam.py"),
        storage=storage_url,
        n_trials=1,
        measure=fast_measure,
        lr_find=False,
    )
    with pytest.raises(WorkloadError) as info:
        search(options)
    assert str(info.value) == (
        f"workload {options.workload!r}: RuntimeError: the optimizer's state is corrupt at sam.py:102 (its first "
        "training step, at the baseline's batch_size 16); it failed inside optimizer.step(), and with a closure "
        "too (Workload.step_closure)"
    )
    assert not Path(storage_url.removeprefix("sqlite:///")).exists()
