"""autotune.runner._child: the trial process's entry point, started as ``python -m autotune.runner._child FD
[WATCHDOG_FD]`` with the job on stdin: its events on FD apart from the workload's own output, every failure
sent as one "failed" event with its status and reason, and a trial that never outlives its parent.

Each trial process imports torch (2-3 s): the trials whose events are checked start together, once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from typing import Any

import psutil
import pytest
from conftest import WORKLOADS, workload_spec

from autotune.runner import MeasureSettings, TrialJob

CHILD_MODULE = "autotune.runner._child"
MARK_VARIABLE = "AUTOTUNE_TEST_TRIAL_MARK"
FAST = MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_window_steps=20)  # conftest's fast_measure
# A trial that runs far longer than any test waits for it (faults.slow: 0.3 s a step).
LONG = MeasureSettings(warmup_steps=1, windows=50, window_seconds=1.0, max_window_steps=20)
# SIGKILL takes effect asynchronously; a moment, shorter than the 5 s after which orphaned DataLoader
# workers notice that their parent is gone and exit by themselves (which would hide a leak).
_KILL_GRACE_SECONDS = 1.0


def _line_of(file: str, text: str) -> int:
    lines = (WORKLOADS / file).read_text().splitlines()
    return next(number for number, line in enumerate(lines, start=1) if text in line)


def _job(name: str, config: dict, file: str = "tiny.py", **options: Any) -> str:
    job = TrialJob(workload=workload_spec(name, file), config=config, measure=FAST, timeout_seconds=120, **options)
    return json.dumps(job.to_json())


class Child:
    """``python -m autotune.runner._child FD`` given ``job_text``; its events, exit status and output once done."""

    def __init__(self, job_text: str) -> None:
        self.read_fd, write_fd = os.pipe()
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", CHILD_MODULE, str(write_fd)],
            stdin=subprocess.PIPE,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,),
            start_new_session=True,
        )
        os.close(write_fd)
        self.process.stdin.write(job_text.encode())
        self.process.stdin.close()

    def finish(self) -> Child:
        with os.fdopen(self.read_fd) as channel:
            self.lines = channel.read().splitlines()
        self.returncode = self.process.wait(timeout=120)
        self.log.seek(0)
        self.output = self.log.read().decode(errors="replace")
        self.log.close()
        return self

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]

    @property
    def failure(self) -> dict[str, Any]:
        [failed] = [event for event in self.events if event["event"] == "failed"]
        return failed


@pytest.fixture(scope="module")
def trials(tmp_path_factory) -> dict[str, Child]:
    """One trial process per case, started together. (Out of memory and the LR sweep end the same way through
    run_trial: test_runner.py, test_lr_find.py.)"""
    folder = tmp_path_factory.mktemp("child")
    chatty = folder / "chatty.py"
    chatty.write_text(
        textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(WORKLOADS)!r})
            from tiny import workload as tiny

            print("the workload prints to stdout", flush=True)
            print("and to stderr", file=sys.stderr, flush=True)

            def workload():
                return tiny()
            """
        )
    )
    jobs = {
        "ok": json.dumps(TrialJob(workload=f"{chatty}:workload", config={"batch_size": 8}, measure=FAST).to_json()),
        "error": _job("misbehaving", {"batch_size": 48}),
        "diverged": _job("diverging", {"batch_size": 16}),
        "optimizer_step": _job("broken_step", {"batch_size": 16}, file="sam.py"),
        "not_a_job": "this is not JSON",
    }
    started = {name: Child(text) for name, text in jobs.items()}
    return {name: child.finish() for name, child in started.items()}


# --- Events -------------------------------------------------------------------------------------------


def test_child_sends_its_events_on_the_channel_and_exits_zero(trials):
    child = trials["ok"]
    assert child.returncode == 0, child.output
    kinds = [event["event"] for event in child.events]
    assert kinds == ["started", "warmup_step", "warmup", "window", "window", "done"]
    assert child.events[0]["device"] == "cpu"


def test_child_workload_output_goes_to_its_stdout_never_the_channel(trials):
    child = trials["ok"]
    assert "the workload prints to stdout" in child.output and "and to stderr" in child.output
    assert not any("workload prints" in line for line in child.lines)  # every channel line is an event


# --- Failures -----------------------------------------------------------------------------------------


def test_child_exception_is_an_error_naming_the_workloads_line_with_the_traceback_in_its_output(trials):
    child = trials["error"]
    assert child.returncode == 0  # the failure is data: the process ends normally once it is sent
    line = _line_of("tiny.py", 'raise ValueError("bad batch")')
    assert child.failure == {
        "event": "failed",
        "status": "error",
        "reason": f"ValueError: bad batch at tiny.py:{line}",
        "in_optimizer_step": False,
    }
    assert child.events[-1]["event"] == "failed"
    assert "Traceback (most recent call last)" in child.output and "ValueError: bad batch" in child.output


def test_child_nan_loss_is_diverged_without_a_traceback(trials):
    child = trials["diverged"]
    assert child.failure == {"event": "failed", "status": "diverged", "reason": "loss became nan in warm-up step 1"}
    assert "Traceback" not in child.output


def test_child_error_raised_by_the_optimizers_step_says_so(trials):
    failure = trials["optimizer_step"].failure
    line = _line_of("sam.py", """raise RuntimeError("the optimizer's state is corrupt")""")
    assert failure["status"] == "error"
    assert failure["reason"] == f"RuntimeError: the optimizer's state is corrupt at sam.py:{line}"
    assert failure["in_optimizer_step"] is True  # the search then tries the step with a closure
    # An error in the workload's loss, outside the optimizer's step, does not.
    assert trials["error"].failure["in_optimizer_step"] is False


def test_child_job_it_cannot_read_is_an_error_sent_on_the_channel(trials):
    child = trials["not_a_job"]
    assert child.returncode == 0
    assert [event["event"] for event in child.events] == ["failed"]
    assert child.failure["status"] == "error"
    assert child.failure["reason"].startswith("JSONDecodeError: Expecting value")


# --- The trial never outlives its parent -------------------------------------------------------------------


@pytest.fixture
def trial_mark(monkeypatch: pytest.MonkeyPatch) -> str:
    """A value in the environment that every process of this test's trials inherits."""
    mark = uuid.uuid4().hex
    monkeypatch.setenv(MARK_VARIABLE, mark)
    return mark


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _assert_pids_gone(pids: list[int]) -> None:
    give_up = time.monotonic() + _KILL_GRACE_SECONDS
    alive = [pid for pid in pids if _running(pid)]
    while alive and time.monotonic() < give_up:
        time.sleep(0.1)
        alive = [pid for pid in pids if _running(pid)]
    assert alive == [], f"still running: {alive}"


def _marked(mark: str) -> list[int]:
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        try:
            if process.status() != psutil.STATUS_ZOMBIE and process.environ().get(MARK_VARIABLE) == mark:
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


def _assert_nothing_left(mark: str) -> None:
    """No process of this test's trials runs any more: the trial process, its workers, anything it started."""
    give_up = time.monotonic() + _KILL_GRACE_SECONDS
    left = _marked(mark)
    while left and time.monotonic() < give_up:
        time.sleep(0.1)
        left = _marked(mark)
    assert left == [], f"processes left behind: {left}"


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def test_run_trial_trial_process_kills_its_group_when_the_watchdog_pipe_closes(trial_mark):
    """Where the kernel cannot kill the trial with its parent: the parent's end of the watchdog pipe
    closes when it dies, and the trial kills itself and its DataLoader workers."""
    events_read, events_write = os.pipe()
    watchdog_read, watchdog_write = os.pipe()
    job = TrialJob(
        workload=workload_spec("slow", "faults.py"),
        config={"batch_size": 8, "num_workers": 2},
        measure=LONG,  # still stepping when the pipe closes (a short trial could be done by then)
        timeout_seconds=120,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", CHILD_MODULE, str(events_write), str(watchdog_read)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        pass_fds=(events_write, watchdog_read),
        start_new_session=True,
    )
    try:
        os.close(events_write)
        os.close(watchdog_read)
        process.stdin.write(json.dumps(job.to_json()).encode())
        process.stdin.close()
        with os.fdopen(events_read) as events:
            for line in events:  # the first warm-up step is done: its workers run
                if json.loads(line)["event"] == "warmup_step":
                    break
        workers = [child.pid for child in psutil.Process(process.pid).children()]
        assert len(workers) == 2

        os.close(watchdog_write)  # as the parent's death would
        assert process.wait(timeout=5) == -signal.SIGKILL
        _assert_pids_gone(workers)
        _assert_nothing_left(trial_mark)
    finally:
        _kill_group(process.pid)
        process.wait()


_PARENT = """
import json, os, subprocess, sys, time
read_fd, write_fd = os.pipe()
child = subprocess.Popen(
    [sys.executable, "-m", "autotune.runner._child", str(write_fd)],
    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    pass_fds=(write_fd,), start_new_session=True,
)
os.close(write_fd)
child.stdin.write(sys.argv[1].encode())
child.stdin.close()
for line in os.fdopen(read_fd):
    if json.loads(line)["event"] == "warmup_step":
        break
print(child.pid, flush=True)
time.sleep(120)
"""


def test_child_without_a_watchdog_is_killed_by_the_kernel_when_its_parent_dies(trial_mark):
    """Linux: the trial asks the kernel for SIGKILL on its parent's death (PR_SET_PDEATHSIG), and arms the
    same for each DataLoader worker it forks; here no watchdog pipe could tell it."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    job = TrialJob(
        workload=workload_spec("slow", "faults.py"),
        config={"batch_size": 8, "num_workers": 2},
        measure=LONG,
        timeout_seconds=120,
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, json.dumps(job.to_json())], stdout=subprocess.PIPE, text=True
    )
    trial = None
    try:
        trial = int(parent.stdout.readline())
        workers = [child.pid for child in psutil.Process(trial).children()]
        assert len(workers) == 2 and _running(trial)

        parent.kill()  # SIGKILL: nothing of the parent runs to clean up
        parent.wait()
        _assert_pids_gone([trial, *workers])
        _assert_nothing_left(trial_mark)
    finally:
        parent.kill()
        parent.wait()
        if trial is not None:
            _kill_group(trial)
