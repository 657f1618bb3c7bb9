"""One rank of a data-parallel ``autotune train``: rank 0 alone shows the progress and writes the
checkpoints and the run record; every rank trains."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import workload_spec

from autotune.knobs._config import TrainConfig

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the rank guard is Linux's")


def test_rank_zero_alone_prints_the_progress_and_writes_the_files(tmp_path):
    config = tmp_path / "config.yaml"
    TrainConfig(batch_size=8, max_lr=0.01).save(config)
    checkpoints = tmp_path / "ckpt"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "autotune.cli",
            "train",
            "--config",
            str(config),
            "--workload",
            workload_spec(),
            "--checkpoint-dir",
            str(checkpoints),
            "--steps",
            "3",
            "--out",
            str(tmp_path / "run.json"),
            "--nproc-per-trial",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip  (the ranks print to the process's own output, which only a real process has)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    output = result.stdout + result.stderr
    assert sum(line.startswith("training ") for line in lines) == 1, output  # one rank's progress, not two
    assert sum(line.startswith("finished 3 steps") for line in lines) == 1, output
    assert [path.name for path in checkpoints.iterdir()] == ["step_00000003.pt"], output
    assert json.loads((tmp_path / "run.json").read_text())["samples"] == 3 * 8 * 2
