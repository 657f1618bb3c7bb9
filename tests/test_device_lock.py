"""Two searches on one machine: one trial on the device at a time, and one baseline.

Both searches run for real, in processes of their own, on one study; their trials note any other
trial process alive while they step (faults.watches_overlap). That the LR range test runs once
per study is tested in test_lr_checks.py, without processes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
from conftest import workload_spec

# Slower than the baseline (batch 8; a step takes 0.05 s whatever its batch): the baseline stays the
# winner, so no search re-measures a winner against it.
SPACE = "knobs: {batch_size: [4]}\n"


def test_search_two_searches_on_one_machine_take_turns_on_the_device(tmp_path):
    overlap = tmp_path / "overlap"
    overlap.mkdir()
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    storage = f"sqlite:///{tmp_path / 'studies' / 'shared.db'}"
    command = [
        sys.executable,
        "-m",
        "autotune.cli",
        "search",
        "--workload",
        workload_spec("watches_overlap", "faults.py"),
        "--space",
        str(space),
        "--storage",
        storage,
        "--trials",
        "1",
        "--slow-fraction",
        "0",
        "--seed",
        "0",
        "--window-seconds",
        "0.1",
        "--windows",
        "1",
        "--warmup-steps",
        "1",
        "--no-lr-find",
    ]
    env = {**os.environ, "OVERLAP_DIR": str(overlap)}  # and this test run's AUTOTUNE_CACHE_DIR: one lock folder
    searches = [
        subprocess.Popen(command, env=env, cwd=tmp_path, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(2)
    ]
    outputs = [search.communicate(timeout=400)[0] for search in searches]
    assert [search.returncode for search in searches] == [0, 0], outputs

    assert not (overlap / "overlaps").exists(), (overlap / "overlaps").read_text()
    assert len(list(overlap.glob("trial-*"))) >= 3  # the trials did step: the checks, 2 trials
    waited = [output for output in outputs if "note: waiting for cpu: another autotune process (pid " in output]
    assert waited, outputs

    study = optuna.load_study(study_name="faults.watches_overlap", storage=storage)
    assert len([t for t in study.trials if t.user_attrs.get("baseline")]) == 1
    assert len(study.trials) == 2
