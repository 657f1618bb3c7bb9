"""Checkpoints of a full run: one ``step_<N>.pt`` file per save in a folder, the latest two kept.

A checkpoint holds everything ``autotune train --resume`` needs to continue where the run stopped:
the model's weights, the optimizer, OneCycle and GradScaler state (TrainStep.state_dict), the step
count, completed passes, the run's elapsed seconds and figures so far, the config, the run's length
and the random number generators' state.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

from autotune.exceptions import CheckpointError

FORMAT = 1
KEEP = 2  # checkpoints kept in the folder; older ones are removed after each save
_NAME = re.compile(r"^step_(\d+)\.pt$")


def checkpoint_path(folder: str | Path, step: int) -> Path:
    return Path(folder) / f"step_{step:08d}.pt"


def checkpoints(folder: str | Path) -> list[Path]:
    """The folder's checkpoint files, oldest (fewest steps) first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in folder.iterdir() if (match := _NAME.match(path.name))]
    return [path for _, path in sorted(found)]


def latest_checkpoint(folder: str | Path) -> Path | None:
    found = checkpoints(folder)
    return found[-1] if found else None


def save_checkpoint(folder: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` as the checkpoint of its step (a temporary file renamed into place, so a run
    killed mid-save leaves the previous checkpoint intact), then drop all but the latest KEEP."""
    import torch

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = checkpoint_path(folder, state["step"])
    partial = path.with_name(path.name + ".partial")
    torch.save({"format": FORMAT, **state}, partial)
    os.replace(partial, path)
    for old in checkpoints(folder)[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by save_checkpoint (tensors and plain values only: weights_only)."""
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{path}: cannot read the checkpoint ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint of autotune train")
    return state


def check_same_config(path: str | Path, saved: dict[str, Any], config: dict[str, Any]) -> None:
    """A resumed run continues the same config: any knob that differs is refused, by name."""
    for name in sorted(set(saved) | set(config)):
        if saved.get(name) != config.get(name):
            raise CheckpointError(
                f"{path} was saved with {name} {saved.get(name)!r}, the config has {config.get(name)!r}; "
                "--resume continues a run with the config it started with"
            )


def rng_state() -> dict[str, Any]:
    """Python's, NumPy's (when installed) and torch's generators, CPU and CUDA."""
    import torch

    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy
    except ImportError:
        return state
    kind, keys, position, has_gauss, cached = numpy.random.get_state(legacy=True)  # the tuple form
    state["numpy"] = (
        kind,
        numpy.asarray(keys).tolist(),
        position,
        has_gauss,
        cached,
    )  # plain values: weights_only loads them
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    import torch

    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy

        kind, keys, position, has_gauss, cached = state["numpy"]
        numpy.random.set_state((kind, numpy.array(keys, dtype=numpy.uint32), position, has_gauss, cached))
