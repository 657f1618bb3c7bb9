"""``autotune train`` as data-parallel ranks: the run launched through torch.distributed's launcher (the
same as a data-parallel trial's), each rank running the full run in DistributedDataParallel on its shard of
the dataset; rank 0 writes the checkpoints, the run record and the study's figures."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from autotune.exceptions import TrainingError

if TYPE_CHECKING:
    from autotune.training._run_plan import TrainListener, TrainOptions
    from autotune.training._run_record import RunRecord


def in_group() -> bool:
    """Whether this process is a rank that torch.distributed's launcher started."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "WORLD_SIZE" in os.environ


def leads() -> bool:
    """Whether this process writes the run's files: outside a group, or as its rank 0."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def run_group(options: TrainOptions, ranks: int, listener: TrainListener) -> RunRecord:
    """The full run as ``ranks`` processes (rank 0 shows its progress); the run record rank 0 wrote."""
    from autotune.runner._launch import launch
    from autotune.training._run_record import RunRecord

    for note in (f"{ranks} data-parallel ranks (torchrun --standalone, DistributedDataParallel)",):
        listener.on_note(note)
    with tempfile.TemporaryDirectory(prefix="autotune-train-") as folder:
        path = Path(folder) / "options.json"
        values = {key: str(value) if isinstance(value, Path) else value for key, value in _fields(options).items()}
        path.write_text(json.dumps({**values, "nproc_per_trial": ranks}))
        failures = launch(ranks, ["-m", "autotune.training._group", str(path)])
    if failures:
        rank, how = min(failures.items())
        raise TrainingError(f"rank {rank} of the {ranks}-rank run ended with {how} (its log is above)")
    return RunRecord(**json.loads(Path(options.record_path).read_text()))


def _fields(options: TrainOptions) -> dict[str, object]:
    return {field.name: getattr(options, field.name) for field in dataclasses.fields(options)}


def main() -> None:
    """One rank of the run: joins the group, trains; rank 0 shows its progress and writes the files."""
    from autotune.runner._child import _die_with_parent
    from autotune.runner._group import start_group
    from autotune.runner._launch import LAUNCHER_PID_ENV
    from autotune.training._full_run import train
    from autotune.training._run_plan import TrainListener, TrainOptions

    launcher = os.environ.get(LAUNCHER_PID_ENV)
    _die_with_parent(None, parent=int(launcher) if launcher else None)  # ranks live in sessions of their own
    options = TrainOptions(**json.loads(Path(sys.argv[1]).read_text()))
    from autotune.knobs._device import detect_device

    group = start_group(detect_device(options.device).torch_device, timeout_seconds=1800.0)
    if group.rank != 0:  # only rank 0 checkpoints and shows progress: every rank holds the same weights
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
