"""Workload bugs refused in one line: by the check before the study, and when the first trials all fail alike."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from autotune._checks import RepeatedErrors
from autotune.exceptions import WorkloadError
from autotune.study import SearchListener, SearchOptions, search

from conftest import WORKLOADS, run_cli, workload_spec

SPACE = "knobs: {batch_size: [8, 16, 32]}\n"


def _options(name: str, storage: str, space: Path, fast_measure, **extra) -> SearchOptions:
    return SearchOptions(workload=workload_spec(name, "faults.py"), storage=storage, space=space, n_trials=4,
                         measure=fast_measure, seed=0, slow_fraction=0.0, lr_find=False, **extra)


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
    options = SearchOptions(workload=workload_spec(), storage=storage_url, space=space, n_trials=1,
                            measure=fast_measure, seed=0, lr_find=False)
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
