"""The launcher of a data-parallel trial: torch.distributed's own (torchrun), run in this process as
``python -m autotune.runner._launch EVENTS WATCHDOG_FD JOB``.

It starts ``world_size`` ranks (autotune.runner._rank) on this machine through
autotune.training._distributed.launch: a standalone c10d rendezvous on a free port, no restarts (a rank
that fails ends the group), ranks watched every 0.1 s. torchrun starts each rank in a session of its
own, so stopping the launcher's process group would leave them running: each rank dies with the
launcher (PR_SET_PDEATHSIG, set in the rank), the launcher dies with the trial's parent (the same, and
the watchdog pipe), and the parent kills every process of the tree it has seen.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

from autotune.training._distributed import first_cause, killed_by_signal, launch


def main() -> None:
    """The trial's launcher: dies with its parent, launches the ranks, and reports a rank that died
    without a word (a signal, an exit) as the trial's failure."""
    events_path, watchdog_fd, job_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    _die_with_parent(watchdog_fd)
    from autotune.runner._outcome import TrialJob

    with open(job_path) as job_file:
        world_size = TrialJob.from_json(json.load(job_file)).world_size
    failures = launch(world_size, ["-m", "autotune.runner._rank", events_path, job_path])
    if failures:
        rank, how = first_cause(failures)
        killed = how == "signal SIGKILL"
        reason = (
            f"rank {rank} was killed by SIGKILL (the host's out-of-memory killer)"
            if killed
            else f"rank {rank} ended with {how} before reporting a result"
        )
        # A rank's own report, where one sent it, came first and says why, unless a rank was killed by
        # a signal: its peers then report only that they lost it, and this word replaces theirs.
        event = {"event": "failed", "status": "oom" if killed else "error", "reason": reason}
        with open(events_path, "w") as channel:
            channel.write(json.dumps({**event, "replaces": killed_by_signal(how)}) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1 if failures else 0)


def _die_with_parent(watchdog_fd: int) -> None:
    """The launcher dies with the trial's parent (PR_SET_PDEATHSIG), its ranks with it; where the
    parent is gone, a thread reading end-of-file on the watchdog pipe kills every rank and the
    launcher's own process group."""
    from autotune.runner._child import _die_with_parent as die_with_parent

    die_with_parent(None)
    threading.Thread(target=_watch, args=(watchdog_fd,), name="autotune-watchdog", daemon=True).start()


def _watch(watchdog_fd: int) -> None:
    """Nothing is ever written to the pipe: the read returns only when the parent is gone."""
    while os.read(watchdog_fd, 1):
        pass
    kill_descendants(os.getpid())
    os.killpg(os.getpgrp(), signal.SIGKILL)


def kill_descendants(pid: int) -> None:
    """SIGKILL every descendant of ``pid``, in whatever session it runs (torchrun's ranks have their own)."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            continue


if __name__ == "__main__":
    main()
