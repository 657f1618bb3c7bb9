"""``autotune train`` as data-parallel ranks: the run launched as a group of the config's world size
(or --nproc-per-trial), the record counting every rank's samples, and a failed rank named in one line."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import run_cli, workload_spec

from autotune.knobs._config import TrainConfig
from autotune.training import _group

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the rank guard is Linux's")


def _train(tmp_path, workload: str, *extra: str):
    config = tmp_path / "config.yaml"
    TrainConfig(batch_size=8, max_lr=0.01, world_size=2).save(config)
    args = ["train", "--config", str(config), "--workload", workload, "--checkpoint-dir", str(tmp_path / "ckpt")]
    return run_cli(*args, "--steps", "4", "--out", str(tmp_path / "run.json"), *extra)


def test_outside_a_group_this_process_leads():
    assert not _group.in_group()
    assert _group.leads()


def test_train_of_a_two_rank_config_runs_two_ranks_and_counts_their_samples(tmp_path):
    result = _train(tmp_path, workload_spec())
    assert result.exit_code == 0, result.output
    assert "note: 2 data-parallel ranks (torchrun --standalone, DistributedDataParallel)" in result.output
    record = json.loads((tmp_path / "run.json").read_text())
    assert record["steps"] == 4
    assert record["effective_batch_size"] == 16  # 8 per rank, 2 ranks
    assert record["samples"] == 4 * 8 * 2


def test_train_with_a_rank_that_dies_names_it_in_one_line(tmp_path):
    result = _train(tmp_path, workload_spec("killed_rank_1", "ddp.py"))
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert errors == ["Error: rank 1 of the 2-rank run ended with signal SIGKILL (its log is above)"]
