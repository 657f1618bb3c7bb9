"""Entry point of a trial process: forked from the warm server (autotune.runner._pool), or
started as ``python -m autotune.runner._child FD WATCHDOG_FD`` with the job on stdin.

Events go back as JSON lines on file descriptor FD, so the workload's own prints
(stdout/stderr, kept in a log file by the parent) never mix with them. WATCHDOG_FD is the
read end of a pipe whose write end only the parent holds: it reads end-of-file when the parent dies.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import sysconfig
import threading
import traceback
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def main() -> None:
    run(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else None, sys.stdin.read())


def run(channel_fd: int, watchdog_fd: int | None, job_text: str) -> None:
    """The trial: ``job_text`` (a TrialJob as JSON) run by the harness, its events sent as JSON
    lines on ``channel_fd``. Never returns: the process exits once the result is sent."""
    _die_with_parent(watchdog_fd)
    channel = os.fdopen(channel_fd, "w", buffering=1)

    def emit(event: dict[str, Any]) -> None:
        channel.write(json.dumps(event) + "\n")
        channel.flush()

    measure_job(job_text, emit)
    channel.close()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown (DataLoader workers, CUDA context): the parent reaps the process group.
    os._exit(0)


def measure_job(job_text: str, emit: Callable[[dict[str, Any]], None], *, where: str = "") -> bool:
    """``job_text`` (a TrialJob as JSON) measured by the harness (or the LR sweep), its events emitted;
    an exception is emitted as the trial's ``failed`` event, its reason prefixed with ``where`` (a
    data-parallel trial's rank). True when it ran through, False when it failed."""
    # Imported here so that a broken installation is reported through the channel too.
    from autotune.runner._harness import Diverged, run_harness
    from autotune.runner._oom import is_oom_error
    from autotune.runner._outcome import Status, TrialJob
    from autotune.runner._sweep import run_lr_sweep
    from autotune.workload._workload import load_workload

    try:
        job = TrialJob.from_json(json.loads(job_text))
        if job.world_size > 1:
            from autotune.training._distributed import start_group

            start_group(job.device, job.timeout_seconds)
        measure = run_lr_sweep if job.lr_sweep is not None else run_harness
        measure(job, load_workload(job.workload), emit)
    except Diverged as exc:
        emit({"event": "failed", "status": Status.DIVERGED.value, "reason": f"{where}{exc}"})
        return False
    except BaseException as exc:  # noqa: BLE001 - the trial's outcome is data; the traceback goes to the log
        traceback.print_exc()
        if where and _peer_lost(exc):
            return False  # another rank died first: its own report, or the launcher's, says why
        status = Status.OOM if is_oom_error(exc) else Status.ERROR
        emit(
            {
                "event": "failed",
                "status": status.value,
                "reason": f"{where}{_reason(exc)}"[:500],
                "in_optimizer_step": _in_optimizer_step(exc),
            }
        )
        return False
    return True


def _die_with_parent(watchdog_fd: int | None, parent: int | None = None) -> None:
    """The trial process and its DataLoader workers never outlive the process that started the trial
    (a search killed with SIGKILL, a lost job): on Linux the kernel sends SIGKILL when the parent dies
    (PR_SET_PDEATHSIG), to the trial and to every process it forks; everywhere, a thread that reads
    end-of-file on the watchdog pipe kills the trial's whole process group. ``parent``: the pid the
    parent must have (a rank's launcher); one already gone by the time the signal is armed ends this
    process at once."""
    if sys.platform.startswith("linux"):
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        forking = {"parent": os.getpid()}

        def die_with_parent() -> None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

        def in_forked_child() -> None:
            die_with_parent()
            if os.getppid() != forking["parent"]:  # the parent died before the signal was armed
                os._exit(1)

        die_with_parent()
        if parent is not None and os.getppid() != parent:  # the launcher died before the signal was armed
            os._exit(1)
        # Forked DataLoader workers die with the trial process (the setting is not inherited by a fork).
        os.register_at_fork(before=lambda: forking.update(parent=os.getpid()), after_in_child=in_forked_child)
    if watchdog_fd is not None:
        threading.Thread(target=_watch, args=(watchdog_fd,), name="autotune-watchdog", daemon=True).start()


def _watch(watchdog_fd: int) -> None:
    """Nothing is ever written to the pipe: the read returns only when the parent is gone."""
    while os.read(watchdog_fd, 1):
        pass
    os.killpg(os.getpgrp(), signal.SIGKILL)  # the trial leads its own process group: workers included


def _peer_lost(exc: BaseException) -> bool:
    """A collective that failed because another rank of the group is gone (its connection closed or
    reset): a consequence, not the trial's cause."""
    import torch.distributed as dist

    text = str(exc)
    lost = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
    return (isinstance(exc, (RuntimeError, dist.DistError))) and any(marker in text for marker in lost)


def _in_optimizer_step(exc: BaseException) -> bool:
    """Whether the exception came out of the optimizer's step, as autotune.training._apply.TrainStep calls it."""
    from autotune.training import _apply

    training = os.path.abspath(_apply.__file__)
    return any(
        os.path.abspath(frame.filename) == training
        and frame.name == "__call__"
        and "optimizer" in (frame.line or "")
        and ".step(" in (frame.line or "")
        for frame in traceback.extract_tb(exc.__traceback__)
    )


def _reason(exc: BaseException) -> str:
    # The innermost frame of the workload's own code (not autotune's, not a library's) says where it broke.
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    libraries = tuple({path + os.sep for name, path in sysconfig.get_paths().items() if name.endswith("lib")})
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if not frame.filename.startswith((package, *libraries, "<"))
    ]
    where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
    lines = str(exc).strip().splitlines()
    message = lines[0] if lines else ""
    return f"{type(exc).__name__}: {message}{where}"[:500]


if __name__ == "__main__":
    main()
