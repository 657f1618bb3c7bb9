"""Entry point of one rank of a data-parallel trial, as torch.distributed's launcher starts it:
``python -m autotune.runner._rank EVENTS JOB``.

EVENTS is a named pipe the trial's parent reads (the launcher does not pass file descriptors on to
the ranks); JOB a file holding the TrialJob as JSON. Rank 0 sends the group's events; every rank
sends its own failure, named by its rank, so the parent ends the trial at the first one and no rank
is left waiting for the others.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any


def main() -> None:
    """Run this rank: dies with the launcher, measures the job, exits (non-zero after a failure, so the
    launcher stops the other ranks too)."""
    from autotune.runner._child import _die_with_parent, measure_job
    from autotune.training._distributed import LAUNCHER_PID_ENV, exit_rank

    events_path, job_path = sys.argv[1], sys.argv[2]
    launcher = os.environ.get(LAUNCHER_PID_ENV)
    # torch.distributed's launcher starts each rank in a session of its own: killing the launcher's
    # process group would not reach it, so it dies with the launcher (PR_SET_PDEATHSIG).
    _die_with_parent(None, parent=int(launcher) if launcher else None)
    rank = int(os.environ.get("RANK", "0"))
    # Opening a named pipe for writing does not block: the parent holds it open for reading.
    channel = open(events_path, "w", buffering=1)  # noqa: SIM115 - open until exit_rank below

    def emit(event: dict[str, Any]) -> None:
        # One line per write, below the pipe's atomic size (PIPE_BUF): ranks' lines never interleave.
        if rank == 0 or event["event"] == "failed":
            channel.write(json.dumps(event) + "\n")
            channel.flush()

    with open(job_path) as job_file:
        job_text = job_file.read()
    ok = measure_job(job_text, emit, where=f"rank {rank}: ")
    channel.close()
    exit_rank(0 if ok else 1)  # a failure stops the launcher's other ranks


if __name__ == "__main__":
    main()
