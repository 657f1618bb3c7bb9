"""Entry point of a trial process: ``python -m autotune.runner._child FD`` with the job on stdin.

Events go back as JSON lines on file descriptor FD, so the workload's own prints
(stdout/stderr, kept in a log file by the parent) never mix with them.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from typing import Any


def main() -> None:
    channel = os.fdopen(int(sys.argv[1]), "w", buffering=1)

    def emit(event: dict[str, Any]) -> None:
        channel.write(json.dumps(event) + "\n")
        channel.flush()

    # Imported here so that a broken installation is reported through the channel too.
    from autotune.runner._harness import Diverged, run_harness
    from autotune.runner._oom import is_oom_error
    from autotune.runner._outcome import Status, TrialJob
    from autotune.runner._sweep import run_lr_sweep
    from autotune.workload import load_workload

    try:
        job = TrialJob.from_json(json.loads(sys.stdin.read()))
        run = run_lr_sweep if job.lr_sweep is not None else run_harness
        run(job, load_workload(job.workload), emit)
    except Diverged as exc:
        emit({"event": "failed", "status": Status.DIVERGED.value, "reason": str(exc)})
    except BaseException as exc:  # noqa: BLE001 - the trial's outcome is data; the traceback goes to the log
        traceback.print_exc()
        status = Status.OOM if is_oom_error(exc) else Status.ERROR
        emit({"event": "failed", "status": status.value, "reason": _reason(exc)})
    channel.close()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown (DataLoader workers, CUDA context): the parent reaps the process group.
    os._exit(0)


def _reason(exc: BaseException) -> str:
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if "autotune/runner" not in frame.filename]
    where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
    lines = str(exc).strip().splitlines()
    message = lines[0] if lines else ""
    return f"{type(exc).__name__}: {message}{where}"[:500]


if __name__ == "__main__":
    main()
