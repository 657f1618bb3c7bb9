"""``autotune train`` as data-parallel ranks: the run launched through torch.distributed's launcher (the
same as a data-parallel trial's), each rank (autotune.report._train_rank) running the full run in
DistributedDataParallel on its shard of the dataset; rank 0 writes the checkpoints, the run record and the
study's figures."""

from __future__ import annotations

import dataclasses
import json
import os
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
    from autotune.training._distributed import first_cause, launch
    from autotune.training._run_record import RunRecord

    for note in (f"{ranks} data-parallel ranks (torchrun --standalone, DistributedDataParallel)",):
        listener.on_note(note)
    with tempfile.TemporaryDirectory(prefix="autotune-train-") as folder:
        path = Path(folder) / "options.json"
        values = {key: str(value) if isinstance(value, Path) else value for key, value in _fields(options).items()}
        path.write_text(json.dumps({**values, "nproc_per_trial": ranks}))
        failures = launch(ranks, ["-m", "autotune.report._train_rank", str(path)])  # each rank: its main()
    if failures:
        rank, how = first_cause(failures)
        raise TrainingError(f"rank {rank} of the {ranks}-rank run ended with {how} (its log is above)")
    return RunRecord(**json.loads(Path(options.record_path).read_text()))


def _fields(options: TrainOptions) -> dict[str, object]:
    return {field.name: getattr(options, field.name) for field in dataclasses.fields(options)}
