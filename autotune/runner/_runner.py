"""The parent side of a trial: start a fresh process, follow its events, end it, classify the end.

Nothing a trial does (crash, abort, hang, runaway memory, stray DataLoader workers)
can stop the caller: every path ends with the whole process tree killed and reaped,
and a TrialOutcome with a status and a reason.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import IO, Any

from autotune.knobs._units import format_size
from autotune.runner._device_lock import device_lock
from autotune.runner._memory import GroupTree, ProcessTree
from autotune.runner._outcome import Status, TrialJob, TrialOutcome, WindowResult
from autotune.runner._pool import PooledProcess, pooled
from autotune.runner._scratch import scratch_folder, sweep_stale_scratch

# Called after each timed window; returns (status, reason) to stop the trial there.
WindowDecision = Callable[[WindowResult], "tuple[Status, str] | None"]

_POLL_SECONDS = 0.05  # how often the parent samples memory and checks the clock
_MIN_JUDGED_STEP_SECONDS = 0.1  # shortest warm-up step whose time bounds the trial's throughput
_DIED_FROM = "trial process died from"
_EXITED_EARLY = "trial process exited with code"
# torch's message when the SIGCHLD handler of a DataLoader sees a worker killed by SIGKILL.
_WORKER_KILLED = re.compile(r"DataLoader worker \(pid\(?s?\)? ?([\d, ]+)\) is killed by signal: Killed")


def run_trial(
    job: TrialJob,
    *,
    on_window: WindowDecision | None = None,
    slow_below: float | None = None,
    deadline: float | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> TrialOutcome:
    """Run one trial in a fresh process, once no other trial (of any process) runs on its device.

    ``slow_below`` (the workload's unit per second) stops it as ``slow`` once it provably cannot
    reach that rate;
    ``deadline`` (time.monotonic) cuts it short, or its wait for the device, as a timeout;
    ``on_wait`` is told when the device is busy and the trial waits.
    """
    sweep_stale_scratch()  # folders of trials whose parent died
    with device_lock(job.device, holder=job.workload, on_wait=on_wait, deadline=deadline) as acquired:
        if not acquired:
            return TrialOutcome(
                status=Status.TIMEOUT,
                reason=f"stopped when the search's time budget ran out, while waiting for {job.device}",
            )
        return _run(job, on_window, slow_below, deadline)


def process_crashed(outcome: TrialOutcome) -> bool:
    """The trial process died without reporting an exception (a segfault, an abort, an exit):
    the same config crashes the same way again."""
    return outcome.status is Status.ERROR and outcome.reason.startswith((_DIED_FROM, _EXITED_EARLY))


def _run(
    job: TrialJob, on_window: WindowDecision | None, slow_below: float | None, deadline: float | None
) -> TrialOutcome:
    started = time.monotonic()
    stop_at = started + job.timeout_seconds
    if deadline is not None:
        stop_at = min(stop_at, deadline)
    # Nothing is written to the watchdog pipe: the trial reads end-of-file on it when this process dies.
    watchdog_read, watchdog_write = os.pipe()
    with tempfile.TemporaryFile() as log, scratch_folder() as scratch:
        job_text = json.dumps(job.to_json())
        read_fd, write_fd = _channel(job, scratch)
        try:
            process: PooledProcess | subprocess.Popen[bytes]
            if write_fd is None:  # a data-parallel trial
                process = _start_group(job_text, watchdog_read, log, scratch)
            else:
                process = _start(job, job_text, write_fd, watchdog_read, log, scratch)
        except BaseException:
            for fd in (read_fd, write_fd, watchdog_read, watchdog_write):
                if fd is not None:
                    os.close(fd)
            raise
        if write_fd is not None:
            os.close(write_fd)
        os.close(watchdog_read)
        assert process.pid is not None  # started
        # A group's figure is its largest rank's memory; the tree still holds (and kills) every process.
        tree = GroupTree(process.pid) if job.world_size > 1 else ProcessTree(process.pid)
        follower = _Follower(job, tree, on_window, slow_below, started)
        if isinstance(process, subprocess.Popen) and job.world_size <= 1:
            _send_job(process, job_text)
        if deadline is not None and deadline < started + job.timeout_seconds:
            timeout_reason = "stopped when the search's time budget ran out"
        else:
            timeout_reason = f"no result within the trial timeout ({job.timeout_seconds:.0f}s)"
        try:
            _follow(process, read_fd, tree, follower, stop_at, timeout_reason)
        finally:
            tree.kill()
            process.wait()
            os.close(read_fd)
            os.close(watchdog_write)
        outcome = follower.outcome(process.returncode)
        outcome.wall_seconds = time.monotonic() - started
        _account_overhead(outcome, follower.startup_seconds)
        log.seek(0, os.SEEK_END)
        log.seek(max(0, log.tell() - 4000))
        outcome.log_tail = log.read().decode(errors="replace")
    return outcome


_EVENTS_PIPE = "events"  # a data-parallel trial's named pipe, in its scratch folder
_JOB_FILE = "job.json"  # a data-parallel trial's job, read by each rank


def _channel(job: TrialJob, scratch: str) -> tuple[int, int | None]:
    """The trial's event channel: (read end, write end). A single process writes into a pipe it is
    handed; a data-parallel trial's ranks, which torch.distributed's launcher starts without this
    process's descriptors, open a named pipe by its path (no write end here). It is opened for
    reading and writing so that it never reads end-of-file (the processes' exit is what ends it)."""
    if job.world_size <= 1:
        return os.pipe()
    path = os.path.join(scratch, _EVENTS_PIPE)
    os.mkfifo(path, 0o600)
    return os.open(path, os.O_RDWR), None


def _start_group(job_text: str, watchdog_read: int, log: IO[bytes], scratch: str) -> subprocess.Popen[bytes]:
    """A data-parallel trial's launcher (autotune.runner._launch: torchrun in a fresh interpreter),
    never from the pool: the ranks it starts are fresh interpreters anyway."""
    job_path = os.path.join(scratch, _JOB_FILE)
    with open(job_path, "w") as job_file:
        job_file.write(job_text)
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "autotune.runner._launch",
            os.path.join(scratch, _EVENTS_PIPE),
            str(watchdog_read),
            job_path,
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        pass_fds=(watchdog_read,),
        start_new_session=True,  # its own process group; its ranks are reached through the tree
        env=_child_environment(scratch),
    )


def _start(
    job: TrialJob, job_text: str, write_fd: int, watchdog_read: int, log: IO[bytes], scratch: str
) -> PooledProcess | subprocess.Popen[bytes]:
    """The trial's process: from the pool where one is kept, else a fresh interpreter (the job is sent
    to it on stdin, by _send_job)."""
    if pooled():
        return PooledProcess(write_fd, watchdog_read, log.fileno(), job_text, _child_environment(scratch), job.workload)
    return subprocess.Popen(
        [sys.executable, "-m", "autotune.runner._child", str(write_fd), str(watchdog_read)],
        stdin=subprocess.PIPE,
        stdout=log,
        stderr=subprocess.STDOUT,
        pass_fds=(write_fd, watchdog_read),
        start_new_session=True,  # its own process group: killed as one, workers included
        env=_child_environment(scratch),
    )


def _send_job(process: subprocess.Popen[bytes], job_text: str) -> None:
    """The job written to a fresh trial process's stdin, which is then closed."""
    try:
        assert process.stdin is not None
        process.stdin.write(job_text.encode())
        process.stdin.close()
    except BrokenPipeError:
        pass  # it died at start; its exit status tells why


def _child_environment(scratch: str) -> dict[str, str]:
    """The trial's temporary files (multiprocessing's, DataLoader workers') go to a scratch folder
    removed after the trial, since a killed trial never cleans up after itself. The torch.compile
    cache stays where it normally is, so later trials reuse it."""
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TMPDIR": scratch,
        "TORCHINDUCTOR_CACHE_DIR": os.environ.get(
            "TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"torchinductor_{_user()}")
        ),
    }


def _user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _follow(
    process: Any, read_fd: int, tree: ProcessTree, follower: _Follower, stop_at: float, timeout_reason: str
) -> None:
    reader = _EventReader(read_fd, follower)
    while follower.stop is None:
        pending = reader.read(_POLL_SECONDS)
        follower.check_memory(tree.sample())
        if follower.finished and follower.failure is not None and follower.job.world_size > 1:
            _await_launcher(process, reader, min(stop_at, time.monotonic() + _LAUNCHER_WORD_SECONDS))
            return
        if follower.finished or follower.stop is not None:
            return
        if process.poll() is not None and not pending:
            # Exited. Its last events may have landed after the read above: drain without waiting
            # (DataLoader workers that inherited the pipe can keep it open, so no EOF is owed).
            while reader.read(0) and not follower.finished:
                pass
            return
        if time.monotonic() > stop_at:
            follower.stop = (Status.TIMEOUT, timeout_reason)


_LAUNCHER_WORD_SECONDS = 5.0  # how long a failed group's launcher is given to name the rank that ended it


def _await_launcher(process: Any, reader: _EventReader, until: float) -> None:
    """A rank of a group reported a failure: the launcher ends the others within its monitor interval
    and then says which rank failed first, which may replace the report (a peer killed by a signal)."""
    while process.poll() is None and time.monotonic() < until:
        reader.read(_POLL_SECONDS)
    while reader.read(0):
        pass


class _EventReader:
    """JSON-line events from the trial's pipe, handed to the follower as they arrive."""

    def __init__(self, read_fd: int, follower: _Follower) -> None:
        self.read_fd = read_fd
        self.follower = follower
        self.buffer = b""
        self.closed = False  # every writer (the trial, and any worker that inherited the pipe) has exited

    def read(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for data and handle the complete lines; True if anything came."""
        if self.closed:
            time.sleep(timeout)
            return False
        if not select.select([self.read_fd], [], [], timeout)[0]:
            return False
        chunk = os.read(self.read_fd, 65536)
        self.closed = not chunk
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self.follower.handle(json.loads(line))
        return bool(chunk)


class _Follower:
    """Accumulates a trial's events and decides when the parent must stop it."""

    def __init__(
        self,
        job: TrialJob,
        tree: ProcessTree,
        on_window: WindowDecision | None,
        slow_below: float | None,
        started: float | None = None,
    ) -> None:
        self.job = job
        self.tree = tree
        self.on_window = on_window
        self.slow_below = slow_below
        self.windows: list[WindowResult] = []
        self.lr_curve: dict | None = None
        self.info: dict = {}
        self.failure: tuple[Status, str] | None = None
        self.in_optimizer_step = False  # the failure came out of optimizer.step()
        self.stop: tuple[Status, str] | None = None  # set when the parent ends the trial
        self.finished = False
        self.started = started  # time.monotonic() when the trial process was asked for
        self.startup_seconds: float | None = None

    @property
    def unit(self) -> str:
        """The workload's unit, as the trial's "started" event named it."""
        return self.info.get("unit") or "samples"

    def handle(self, event: dict) -> None:
        kind = event.pop("event")
        if kind == "warmup_step":
            self.stop = self.stop or self._slow_warmup(event)
        elif kind == "window":
            window = WindowResult(**event)
            self.windows.append(window)
            rate = window.units_per_second  # the workload's unit: padding-heavy batches are not fast
            if window.index == 0 and self.slow_below is not None and rate < self.slow_below:
                self.stop = self.stop or (
                    Status.SLOW,
                    f"{rate:.1f} {self.unit}/s in the first window, below the slow threshold {self.slow_below:.1f}",
                )
            if self.on_window is not None and self.stop is None:
                self.stop = self.on_window(window)
        elif kind == "lr_curve":
            self.lr_curve = event
        elif kind == "failed":
            # A group's first failing rank says why; the launcher's word comes later, and replaces it
            # where a rank was killed by a signal (the others then failed only for want of it).
            if self.failure is None or event.get("replaces"):
                self.failure = (Status(event["status"]), event["reason"])
                self.in_optimizer_step = bool(event.get("in_optimizer_step"))
            self.finished = True
        else:
            if kind == "started" and self.started is not None:
                self.startup_seconds = time.monotonic() - self.started
            self.info.update(event)
            self.finished = kind == "done"

    def _slow_warmup(self, step: dict) -> tuple[Status, str] | None:
        """A steady warm-up step whose compute alone (data waits excluded) is under the threshold:
        data loading only adds time, so no timed window can reach it."""
        first_steady = 2 if step["compiled"] else 1  # step 0 starts workers and compiles; compiled modes settle later
        compute_seconds = step["seconds"] - step["data_wait_seconds"]
        # Steps of a few milliseconds are dominated by first-call overheads: only long steps are judged.
        if self.slow_below is None or step["index"] < first_steady or compute_seconds < _MIN_JUDGED_STEP_SECONDS:
            return None
        bound = step.get("units", step["samples"]) / compute_seconds
        if bound >= self.slow_below:
            return None
        return Status.SLOW, (
            f"warm-up step {step['index'] + 1} computed at {bound:.1f} {self.unit}/s without data loading, "
            f"below the slow threshold {self.slow_below:.1f}"
        )

    def check_memory(self, current_bytes: int) -> None:
        budget = self.job.memory_budget_bytes
        if budget is not None and self.job.device == "cpu" and current_bytes > budget and self.stop is None:
            self.stop = (
                Status.OOM,
                f"resident memory {format_size(current_bytes)} exceeded the memory budget {format_size(budget)}",
            )

    def outcome(self, returncode: int | None) -> TrialOutcome:
        outcome = TrialOutcome(status=Status.OK, windows=self.windows, lr_curve=self.lr_curve, **self._figures())
        if self.stop is not None:
            outcome.status, outcome.reason = self.stop
        elif self.failure is not None:
            outcome.status, outcome.reason = self.failure
            outcome.in_optimizer_step = self.in_optimizer_step
            killed_worker = _WORKER_KILLED.search(outcome.reason)
            if outcome.status is Status.ERROR and killed_worker:
                outcome.status = Status.OOM
                outcome.reason = (
                    f"DataLoader worker (pid {killed_worker.group(1)}) was killed by SIGKILL "
                    "(the host's out-of-memory killer)"
                )
        elif not self.finished:
            outcome.status, outcome.reason = _died(returncode)
        elif (
            outcome.peak_memory_bytes is not None
            and self.job.memory_budget_bytes is not None
            and (outcome.peak_memory_bytes > self.job.memory_budget_bytes)
        ):
            outcome.status = Status.OOM
            outcome.reason = (
                f"peak memory {format_size(outcome.peak_memory_bytes)} exceeded the memory budget "
                f"{format_size(self.job.memory_budget_bytes)}"
            )
        return outcome

    def _figures(self) -> dict:
        info = self.info
        figures: dict = {
            "device": info.get("device"),
            "torch_version": info.get("torch_version"),
            "unit": info.get("unit"),
            "dataset_size": info.get("dataset_size"),
            "cycle_momentum": info.get("cycle_momentum"),
            "adaptive_optimizer": info.get("adaptive_optimizer"),
            "evaluation_seconds": info.get("evaluation_seconds"),
            "warmup_seconds": info.get("warmup_seconds"),
            "compile_seconds": info.get("compile_seconds"),
            "loss_start": info.get("loss_start"),
            "loss_end": self.windows[-1].loss if self.windows else None,
            "scaler_skipped_steps": info.get("scaler_skipped_steps"),
            "noise": info.get("noise"),
        }
        if self.job.device == "cpu":
            # CPU: the sampled tree peak, never below the kernel's record of the trial process's own peak.
            figures["peak_memory_bytes"] = max(self.tree.peak_bytes, info.get("process_peak_rss_bytes") or 0) or None
        else:
            figures["peak_memory_bytes"] = info.get("device_peak_memory_bytes")
        if self.windows:
            rates = [window.samples_per_second for window in self.windows]
            mean = statistics.fmean(rates)
            figures["samples_per_second"] = statistics.median(rates)
            figures["unit_per_second"] = statistics.median(window.units_per_second for window in self.windows)
            figures["throughput_cv"] = statistics.pstdev(rates) / mean if mean > 0 else None
            figures["data_wait_fraction"] = sum(w.data_wait_seconds for w in self.windows) / sum(
                w.seconds for w in self.windows
            )
        return figures


def _account_overhead(outcome: TrialOutcome, startup_seconds: float | None) -> None:
    """What the trial cost beyond what it measured: its wall time outside the timed windows and the
    evaluation (process start, imports, building the model and data, worker start, warm-up, the
    end), with compile aside: a compile is the config's own cost, projected into its full run."""
    outcome.startup_seconds = startup_seconds
    if not outcome.windows or outcome.wall_seconds is None:
        return
    measured = sum(window.seconds for window in outcome.windows) + (outcome.evaluation_seconds or 0.0)
    compile_seconds = outcome.compile_seconds or 0.0
    outcome.overhead_seconds = max(0.0, outcome.wall_seconds - measured - compile_seconds)
    outcome.overhead_fraction = outcome.overhead_seconds / max(outcome.wall_seconds - compile_seconds, 1e-9)


def _died(returncode: int | None) -> tuple[Status, str]:
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:  # real-time signals have no name
            name = f"signal {-returncode}"
        if -returncode == signal.SIGKILL:
            return Status.OOM, "trial process was killed by SIGKILL (the host's out-of-memory killer)"
        return Status.ERROR, f"{_DIED_FROM} {name}"
    return Status.ERROR, f"{_EXITED_EARLY} {returncode} before reporting a result"
