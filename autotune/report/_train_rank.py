"""One rank of a data-parallel ``autotune train`` (``python -m autotune.report._train_rank OPTIONS.json``,
started by autotune.training._group.run_group through torch.distributed's launcher): it joins the group
and trains; rank 0 shows the run's progress and writes its files."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autotune.training._run_plan import TrainOptions


def main() -> None:
    """One rank of the run: joins the group, trains; rank 0 shows its progress and writes the files."""
    from autotune.runner._child import _die_with_parent
    from autotune.training._distributed import LAUNCHER_PID_ENV, exit_rank, start_group
    from autotune.training._run_plan import TrainOptions

    launcher = os.environ.get(LAUNCHER_PID_ENV)
    _die_with_parent(None, parent=int(launcher) if launcher else None)  # ranks live in sessions of their own
    options = TrainOptions(**json.loads(Path(sys.argv[1]).read_text()))
    from autotune.knobs._device import detect_device

    group = start_group(detect_device(options.device).torch_device, timeout_seconds=1800.0)
    try:
        _train(group.rank, options)
    except BaseException:  # printed as the interpreter would: exit_rank skips the interpreter's teardown
        traceback.print_exc()
        exit_rank(1)
    exit_rank(0)


def _train(rank: int, options: TrainOptions) -> None:
    """Train this rank's part of the run: rank 0 shows the progress and writes the files; the others
    neither checkpoint nor print (every rank holds the same weights)."""
    from autotune.training._full_run import train
    from autotune.training._run_plan import TrainListener

    if rank != 0:
        options = dataclasses.replace(options, checkpoint_every_steps=None, checkpoint_every_seconds=None)
        train(options, TrainListener())
        return
    from autotune.report._train_console import TrainPrinter

    printer = TrainPrinter()
    try:
        train(options, printer)
    finally:
        printer.close()


if __name__ == "__main__":
    main()
