"""run_trial: a fresh process per trial, every way it can end classified, nothing left behind.

Each run_trial call starts a Python process that imports torch (2-3 s), so the trials here
are few and each one checks everything its ending shows.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import select
import statistics
import tempfile
import time
import types
import uuid
from pathlib import Path

import psutil
import pytest
import torch
from conftest import WORKLOADS, workload_spec

from autotune.runner import MeasureSettings, Status, TrialJob, TrialOutcome, WindowResult, _runner, run_trial
from autotune.runner._device_lock import device_lock, lock_path
from autotune.runner._pool import server_pids

MIB = 1024**2
CHILD_MODULE = "autotune.runner._child"
MARK_VARIABLE = "AUTOTUNE_TEST_TRIAL_MARK"
# SIGKILL takes effect asynchronously; a moment, shorter than the 5 s after which orphaned DataLoader
# workers notice that their parent is gone and exit by themselves (which would hide a leak).
_KILL_GRACE_SECONDS = 1.0


def _line_of(text: str) -> int:
    """Line number of the first line of tests/workloads/tiny.py containing ``text``."""
    lines = (WORKLOADS / "tiny.py").read_text().splitlines()
    return next(number for number, line in enumerate(lines, start=1) if text in line)


def _trial(
    fast_measure: MeasureSettings,
    name: str,
    config: dict,
    *,
    timeout_seconds: float = 120.0,
    memory_budget_bytes: int | None = None,
    **options,
) -> TrialOutcome:
    job = TrialJob(
        workload=workload_spec(name),
        config=config,
        measure=fast_measure,
        timeout_seconds=timeout_seconds,
        memory_budget_bytes=memory_budget_bytes,
    )
    return run_trial(job, **options)


@pytest.fixture
def trial_mark(monkeypatch: pytest.MonkeyPatch) -> str:
    """A value in the environment that every process of this test's trials inherits (the trial,
    its DataLoader workers, a grandchild in its own session), so that they can be told apart from
    the trials of any other test run on this machine."""
    mark = uuid.uuid4().hex
    monkeypatch.setenv(MARK_VARIABLE, mark)
    return mark


def _marked_processes(mark: str) -> list[psutil.Process]:
    """Running (not zombie) processes started by this test's trials."""
    found = []
    pool = server_pids()  # the warm server trials fork from lives as long as this process
    for process in psutil.process_iter():
        if process.pid == os.getpid() or process.pid in pool:
            continue
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get(MARK_VARIABLE) == mark:
                found.append(process)
        except psutil.Error:
            continue
    return found


def _describe(processes: list[psutil.Process]) -> list[str]:
    described = []
    for process in processes:
        try:
            described.append(f"{process.pid} {' '.join(process.cmdline())[:200]}")
        except psutil.Error:
            described.append(f"{process.pid} (gone)")
    return described


def _assert_nothing_left(mark: str) -> None:
    """No process of this test's trials runs any more: neither the trial process
    (``python -m autotune.runner._child``), nor a DataLoader worker forked from it (same command line),
    nor anything else it started."""
    give_up = time.monotonic() + _KILL_GRACE_SECONDS
    left = _marked_processes(mark)
    while left and time.monotonic() < give_up:
        time.sleep(0.1)
        left = _marked_processes(mark)
    assert left == [], f"processes left behind: {_describe(left)}"


def _announced(outcome: TrialOutcome, what: str) -> list[str]:
    """Values the announcing fixture workloads printed (``<what> <value>`` lines of the log)."""
    return re.findall(rf"^{what} (\S+)$", outcome.log_tail, flags=re.MULTILINE)


def _assert_pids_gone(pids: list[int]) -> None:
    give_up = time.monotonic() + _KILL_GRACE_SECONDS
    alive = [pid for pid in pids if _running(pid)]
    while alive and time.monotonic() < give_up:
        time.sleep(0.1)
        alive = [pid for pid in pids if _running(pid)]
    assert alive == [], f"still running: {alive}"


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --- A trial that runs to the end -------------------------------------------------------------


def test_run_trial_good_config_reports_sane_figures(tiny_spec, fast_measure, trial_mark):
    seen: list[WindowResult] = []

    def on_window(window: WindowResult):
        seen.append(window)
        return None  # go on

    job = TrialJob(workload=tiny_spec, config={"batch_size": 8}, measure=fast_measure, timeout_seconds=120)
    outcome = run_trial(job, on_window=on_window)

    assert outcome.status is Status.OK, (outcome.reason, outcome.log_tail)
    assert outcome.reason == ""
    assert outcome.device == "cpu"
    assert outcome.torch_version == torch.__version__
    assert outcome.unit == "samples"
    assert outcome.samples_per_second > 0
    assert outcome.unit_per_second == pytest.approx(outcome.samples_per_second)  # unit: samples
    assert outcome.throughput_cv >= 0
    assert outcome.peak_memory_bytes > 0
    assert 0 <= outcome.data_wait_fraction <= 1
    assert outcome.warmup_seconds > 0
    assert outcome.compile_seconds == 0.0
    assert math.isfinite(outcome.loss_start) and outcome.loss_start > 0
    assert math.isfinite(outcome.loss_end) and outcome.loss_end > 0
    assert outcome.wall_seconds > 0

    assert len(outcome.windows) == fast_measure.windows
    assert [window.index for window in outcome.windows] == list(range(fast_measure.windows))
    assert outcome.samples_per_second == pytest.approx(
        statistics.median(window.samples / window.seconds for window in outcome.windows)
    )
    assert outcome.loss_end == outcome.windows[-1].loss
    for window in outcome.windows:
        assert fast_measure.min_window_steps <= window.steps <= fast_measure.max_window_steps
        assert window.samples % 8 == 0
        assert window.samples == window.steps * 8
        assert window.units == window.samples
        assert window.seconds > 0
        assert 0 <= window.data_wait_seconds <= window.seconds

    # on_window: once per window, with the windows the outcome reports.
    assert all(isinstance(window, WindowResult) for window in seen)
    assert [window.index for window in seen] == [window.index for window in outcome.windows]
    assert seen == outcome.windows

    _assert_nothing_left(trial_mark)


def test_run_trial_accumulation_steps_count_every_micro_batch(tiny_spec, fast_measure):
    job = TrialJob(
        workload=tiny_spec,
        config={"batch_size": 8, "accumulation_steps": 2},
        measure=fast_measure,
        timeout_seconds=120,
    )
    outcome = run_trial(job)

    assert outcome.status is Status.OK, (outcome.reason, outcome.log_tail)
    assert len(outcome.windows) == fast_measure.windows
    for window in outcome.windows:
        assert window.samples == window.steps * 8 * 2  # batch_size x accumulation_steps per step


# --- Trials that crash, hang or run out of time -------------------------------------------------


def test_run_trial_abort_is_error_and_leaves_nothing(fast_measure, trial_mark):
    outcome = _trial(fast_measure, "misbehaving", {"batch_size": 16})

    assert outcome.status is Status.ERROR
    assert outcome.reason == "trial process died from SIGABRT"
    assert outcome.windows == []
    _assert_nothing_left(trial_mark)


def test_run_trial_exit_without_result_is_error(fast_measure, trial_mark):
    outcome = _trial(fast_measure, "misbehaving", {"batch_size": 40})

    assert outcome.status is Status.ERROR
    assert outcome.reason == "trial process exited with code 3 before reporting a result"
    _assert_nothing_left(trial_mark)


def test_run_trial_raised_exception_is_error_with_traceback(fast_measure):
    outcome = _trial(fast_measure, "misbehaving", {"batch_size": 48})

    assert outcome.status is Status.ERROR
    line = _line_of('raise ValueError("bad batch")')
    assert outcome.reason == f"ValueError: bad batch at tiny.py:{line}"
    assert outcome.reason.startswith("ValueError: bad batch at tiny.py:")
    assert "Traceback (most recent call last)" in outcome.log_tail
    assert 'raise ValueError("bad batch")' in outcome.log_tail
    assert "ValueError: bad batch" in outcome.log_tail
    assert outcome.user_attrs()["log_tail"] == outcome.log_tail[-2000:]


def test_run_trial_hang_with_workers_is_timeout_and_leaves_nothing(fast_measure, trial_mark):
    started = time.monotonic()
    outcome = _trial(fast_measure, "misbehaving", {"batch_size": 24, "num_workers": 2}, timeout_seconds=3)

    assert time.monotonic() - started < 60  # it returned, well before the workload's hour of sleep
    assert outcome.status is Status.TIMEOUT
    assert outcome.reason == "no result within the trial timeout (3s)"
    _assert_nothing_left(trial_mark)


def test_run_trial_deadline_before_timeout_is_timeout_of_the_search(fast_measure, trial_mark):
    outcome = _trial(
        fast_measure, "misbehaving", {"batch_size": 24}, timeout_seconds=600, deadline=time.monotonic() + 2
    )

    assert outcome.status is Status.TIMEOUT
    assert outcome.reason == "stopped when the search's time budget ran out"
    assert outcome.wall_seconds < 60  # it returned long before the trial timeout
    _assert_nothing_left(trial_mark)


def test_run_trial_exit_with_workers_alive_leaves_no_worker_and_no_file(fast_measure, trial_mark):
    outcome = _trial(fast_measure, "leaves_workers", {"batch_size": 8, "num_workers": 2})

    assert outcome.status is Status.ERROR
    assert outcome.reason == "trial process exited with code 3 before reporting a result"

    # No process: the workers (which ran: the check is not vacuous) are gone with the trial.
    workers = [int(pid) for pid in _announced(outcome, "worker pid")]
    assert workers, outcome.log_tail
    _assert_pids_gone(workers)
    _assert_nothing_left(trial_mark)

    # No file: the trial's temporary files (multiprocessing's pymp-* folders included) went to a
    # per-trial folder under the parent's temporary folder, which is gone although the trial died
    # without cleaning up.
    [scratch] = _announced(outcome, "scratch")
    [multiprocessing_temp] = _announced(outcome, "multiprocessing temp")
    assert Path(os.path.realpath(scratch)).parent == Path(os.path.realpath(tempfile.gettempdir()))
    assert Path(scratch).name.startswith("autotune-trial-")
    assert Path(multiprocessing_temp).parent == Path(scratch)
    assert Path(multiprocessing_temp).name.startswith("pymp-")
    assert not Path(multiprocessing_temp).exists()
    assert not Path(scratch).exists()


def test_run_trial_grandchild_in_own_session_is_killed(fast_measure, trial_mark):
    outcome = _trial(fast_measure, "escapes_session", {"batch_size": 8})

    assert outcome.status is Status.ERROR
    assert outcome.reason == "trial process exited with code 3 before reporting a result"
    grandchildren = [int(pid) for pid in _announced(outcome, "grandchild pid")]
    assert len(grandchildren) == 1, outcome.log_tail
    _assert_pids_gone(grandchildren)
    _assert_nothing_left(trial_mark)


# --- Out of memory, divergence ----------------------------------------------------------------


def test_run_trial_sigkill_is_oom(fast_measure):
    outcome = _trial(fast_measure, "killed", {"batch_size": 8})

    assert outcome.status is Status.OOM
    assert outcome.reason == "trial process was killed by SIGKILL (the host's out-of-memory killer)"
    assert "out-of-memory killer" in outcome.reason


def test_run_trial_out_of_memory_error_is_oom(fast_measure):
    outcome = _trial(fast_measure, "raises_oom", {"batch_size": 32})

    assert outcome.status is Status.OOM
    line = _line_of('raise torch.OutOfMemoryError("CUDA out of memory')
    assert outcome.reason == f"OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB at tiny.py:{line}"


def test_run_trial_nan_loss_is_diverged(fast_measure):
    outcome = _trial(fast_measure, "diverging", {"batch_size": 16})

    assert outcome.status is Status.DIVERGED
    assert outcome.reason == "loss became nan in warm-up step 1"


def test_run_trial_memory_over_budget_is_oom(fast_measure, trial_mark):
    budget = 400 * MIB
    outcome = _trial(fast_measure, "memory_hungry", {"batch_size": 64}, memory_budget_bytes=budget)

    assert outcome.status is Status.OOM
    assert outcome.reason.startswith("resident memory ")
    assert outcome.reason.endswith(" exceeded the memory budget 400.0 MiB")
    assert re.fullmatch(r"resident memory \d+\.\d [MG]iB exceeded the memory budget 400\.0 MiB", outcome.reason)
    assert outcome.peak_memory_bytes > budget
    _assert_nothing_left(trial_mark)


def test_run_trial_memory_under_budget_is_ok(fast_measure):
    budget = 400 * MIB
    outcome = _trial(fast_measure, "memory_hungry", {"batch_size": 4}, memory_budget_bytes=budget)

    assert outcome.status is Status.OK, (outcome.reason, outcome.log_tail)
    assert 0 < outcome.peak_memory_bytes < budget


# --- The parent's decisions: on_window, slow_below -----------------------------------------------


def test_run_trial_on_window_decision_stops_the_trial(tiny_spec, fast_measure, trial_mark):
    calls: list[WindowResult] = []

    def on_window(window: WindowResult):
        calls.append(window)
        return Status.SLOW, "why"

    job = TrialJob(workload=tiny_spec, config={"batch_size": 8}, measure=fast_measure, timeout_seconds=120)
    outcome = run_trial(job, on_window=on_window)

    assert outcome.status is Status.SLOW
    assert outcome.reason == "why"
    assert len(calls) == 1  # no decision is asked for once the trial is stopped
    assert isinstance(calls[0], WindowResult) and calls[0].index == 0
    assert outcome.windows[0] is calls[0]
    # The first window stopped it: fast_measure's windows are short enough for a later one to have
    # come in the same read, but never the end of the trial.
    assert len(outcome.windows) <= fast_measure.windows
    _assert_nothing_left(trial_mark)


def test_run_trial_slow_below_unreachable_rate_is_slow(tiny_spec, fast_measure):
    job = TrialJob(workload=tiny_spec, config={"batch_size": 8}, measure=fast_measure, timeout_seconds=120)
    outcome = run_trial(job, slow_below=1e12)

    assert outcome.status is Status.SLOW
    assert "below the slow threshold" in outcome.reason
    # fast_measure has one warm-up step, which is never judged: the first window decides.
    assert re.fullmatch(
        r"\d+\.\d samples/s in the first window, below the slow threshold 1000000000000\.0", outcome.reason
    ), outcome.reason
    assert outcome.windows[0].index == 0


# --- Bugs --------------------------------------------------------------------------------------


def test_run_trial_events_written_just_before_exit_are_read(tiny_spec, fast_measure, monkeypatch):
    """The runner's select() times out (nothing yet), and before it polls the process, the trial
    writes its remaining events and exits. Forced here by holding the parent after the first window's
    event until the trial has exited (a parent descheduled on a busy machine; in practice the window
    is the time tree.sample() takes, so it happens rarely, and at random)."""
    # Windows that last their 0.2 s (the tiny workload would fill fast_measure's 20 steps in
    # milliseconds), so that the second window and "done" come well after the first window.
    measure = dataclasses.replace(fast_measure, max_window_steps=100_000)
    # The trial as a child of this process, which the held parent below waits for (a trial forked
    # from the warm server is the server's child; the runner's event reading is the same).
    monkeypatch.setenv("AUTOTUNE_TRIAL_START", "fresh")
    real_select = select.select
    events: list[str] = []
    state = {"held": False}
    original_handle = _runner._Follower.handle

    def handle(self, event):
        events.append(event["event"])
        return original_handle(self, event)

    def late_select(rlist, wlist, xlist, timeout):
        if "window" in events and not state["held"]:
            state["held"] = True
            [child] = [
                p
                for p in psutil.Process().children()
                if CHILD_MODULE in " ".join(p.cmdline()) and p.pid not in server_pids()
            ]
            give_up = time.monotonic() + 60
            # Until it has exited and can be reaped (WNOWAIT: left for the runner to reap).
            while os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                if time.monotonic() > give_up:
                    break
                time.sleep(0.01)
            return [], [], []  # the wait ran out just before the trial wrote its last events
        return real_select(rlist, wlist, xlist, timeout)

    monkeypatch.setattr(_runner._Follower, "handle", handle)
    monkeypatch.setattr(_runner, "select", types.SimpleNamespace(select=late_select))
    job = TrialJob(workload=tiny_spec, config={"batch_size": 8}, measure=measure, timeout_seconds=120)
    outcome = run_trial(job)

    assert state["held"]
    assert outcome.status is Status.OK, outcome.reason
    assert len(outcome.windows) == measure.windows


def test_run_trial_death_from_unnamed_signal_is_error(fast_measure, trial_mark):
    outcome = _trial(fast_measure, "realtime_signal", {"batch_size": 8})

    assert outcome.status is Status.ERROR
    assert outcome.reason.startswith("trial process died from ")
    assert "40" in outcome.reason or "SIGRTMIN+6" in outcome.reason


# --- A search that dies, a device that is busy, a temporary folder that is deep --------------------


def test_run_trial_dataloader_worker_killed_by_sigkill_is_oom(fast_measure, trial_mark):
    job = TrialJob(
        workload=workload_spec("worker_killed", "faults.py"),
        config={"batch_size": 4, "num_workers": 1},
        measure=fast_measure,
        timeout_seconds=120,
    )
    outcome = run_trial(job)

    assert outcome.status is Status.OOM, (outcome.reason, outcome.log_tail)
    assert re.fullmatch(
        r"DataLoader worker \(pid \d+\) was killed by SIGKILL \(the host's out-of-memory killer\)", outcome.reason
    )
    _assert_nothing_left(trial_mark)


def test_run_trial_waits_while_another_process_holds_the_device(tiny_spec, fast_measure):
    told: list[str] = []
    job = TrialJob(workload=tiny_spec, config={"batch_size": 8}, measure=fast_measure, timeout_seconds=120)
    # A second open file description of the lock file: flock treats it as another process would.
    with device_lock("cpu", holder="tests/other.py:workload"):
        outcome = run_trial(job, deadline=time.monotonic() + 1.0, on_wait=told.append)

    assert told == [
        f"waiting for cpu: another autotune process (pid {os.getpid()}, tests/other.py:workload) "
        "is running a trial on it"
    ]
    assert outcome.status is Status.TIMEOUT
    assert outcome.reason == "stopped when the search's time budget ran out, while waiting for cpu"
    assert outcome.wall_seconds is None  # no trial process was started
    assert lock_path("cpu").parent == Path(os.environ["AUTOTUNE_CACHE_DIR"]) / "locks"


def test_run_trial_with_a_deep_temporary_folder_and_workers_is_ok(tiny_spec, fast_measure, tmp_path, monkeypatch):
    """DataLoader workers make Unix sockets (107 characters at most) in the trial's TMPDIR: a
    scratch folder under a deep temporary folder would make them fail and the trial hang."""
    deep = tmp_path / ("d" * 60)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    job = TrialJob(
        workload=tiny_spec, config={"batch_size": 8, "num_workers": 1}, measure=fast_measure, timeout_seconds=60
    )
    outcome = run_trial(job)
    assert outcome.status is Status.OK, (outcome.reason, outcome.log_tail)
