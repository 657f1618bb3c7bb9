"""Checkpoint files of autotune train: names, the latest two kept, reading back, config and RNG checks."""

from __future__ import annotations

import random

import pytest
import torch

from autotune.exceptions import CheckpointError
from autotune.training import _checkpoint as checkpoint


def test_save_checkpoint_keeps_the_latest_two(tmp_path):
    for step in (3, 10, 7):
        checkpoint.save_checkpoint(tmp_path, {"step": step})
    assert [path.name for path in checkpoint.checkpoints(tmp_path)] == ["step_00000007.pt", "step_00000010.pt"]
    assert checkpoint.latest_checkpoint(tmp_path) == tmp_path / "step_00000010.pt"
    assert not list(tmp_path.glob("*.partial"))


def test_checkpoints_missing_folder_has_none(tmp_path):
    assert checkpoint.checkpoints(tmp_path / "nope") == []
    assert checkpoint.latest_checkpoint(tmp_path / "nope") is None


def test_load_checkpoint_round_trips_tensors_and_values(tmp_path):
    path = checkpoint.save_checkpoint(tmp_path, {"step": 1, "weights": torch.ones(2), "config": {"batch_size": 8}})
    state = checkpoint.load_checkpoint(path)
    assert state["step"] == 1 and state["config"] == {"batch_size": 8} and torch.equal(state["weights"], torch.ones(2))


def test_load_checkpoint_not_a_checkpoint_is_one_line(tmp_path):
    garbage = tmp_path / "step_00000001.pt"
    garbage.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match=r"^.*step_00000001.pt: cannot read the checkpoint \("):
        checkpoint.load_checkpoint(garbage)
    other = tmp_path / "other.pt"
    torch.save({"model": {}}, other)
    with pytest.raises(CheckpointError, match=r"other.pt: not a checkpoint of autotune train$"):
        checkpoint.load_checkpoint(other)


def test_check_same_config_names_the_first_different_knob(tmp_path):
    checkpoint.check_same_config("c.pt", {"batch_size": 8, "precision": "fp32"}, {"batch_size": 8, "precision": "fp32"})
    with pytest.raises(CheckpointError) as error:
        checkpoint.check_same_config(
            "c.pt", {"batch_size": 8, "precision": "fp32"}, {"batch_size": 8, "precision": "bf16"}
        )
    assert str(error.value) == (
        "c.pt was saved with precision 'fp32', the config has 'bf16'; "
        "--resume continues a run with the config it started with"
    )


def test_rng_state_restores_python_torch_and_numpy(tmp_path):
    numpy = pytest.importorskip("numpy")
    path = checkpoint.save_checkpoint(tmp_path, {"step": 1, "rng": checkpoint.rng_state()})
    expected = (random.random(), torch.rand(1).item(), numpy.random.rand())
    checkpoint.restore_rng_state(checkpoint.load_checkpoint(path)["rng"])
    assert (random.random(), torch.rand(1).item(), numpy.random.rand()) == expected
