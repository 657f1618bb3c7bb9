"""Two searches on one machine: one trial on the device at a time, one baseline, one LR range test.

Both searches run for real, in processes of their own, on one study; their trials note any other
trial process alive while they step (faults.watches_overlap).
"""

from __future__ import annotations

import os
import subprocess
import sys

import optuna

from conftest import workload_spec

# Every config has the effective batch 32 (and fp32): one LR range test applies to any winner.
SPACE = "effective_batch: 32\nknobs: {batch_size: [8, 16, 32]}\n"


def test_search_two_searches_on_one_machine_take_turns_on_the_device(tmp_path):
    overlap = tmp_path / "overlap"
    overlap.mkdir()
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    storage = f"sqlite:///{tmp_path / 'studies' / 'shared.db'}"
    command = [
        sys.executable, "-m", "autotune.cli", "search", "--workload", workload_spec("watches_overlap", "faults.py"),
        "--space", str(space), "--storage", storage, "--trials", "1", "--slow-fraction", "0", "--seed", "0",
        "--window-seconds", "0.1", "--windows", "1", "--warmup-steps", "1",
    ]
    env = {**os.environ, "OVERLAP_DIR": str(overlap)}  # and this test run's AUTOTUNE_CACHE_DIR: one lock folder
    searches = [subprocess.Popen(command, env=env, cwd=tmp_path, text=True, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [search.communicate(timeout=400)[0] for search in searches]
    assert [search.returncode for search in searches] == [0, 0], outputs

    assert not (overlap / "overlaps").exists(), (overlap / "overlaps").read_text()
    assert len(list(overlap.glob("trial-*"))) >= 4  # the trials did step: 2 checks, 2 trials, a range test
    waited = [output for output in outputs if "note: waiting for cpu: another autotune process (pid " in output]
    assert waited, outputs

    study = optuna.load_study(study_name="faults.watches_overlap", storage=storage)
    assert len([t for t in study.trials if t.user_attrs.get("baseline")]) == 1
    assert len(study.trials) == 2
    assert len(study.user_attrs["lr_find"]) == 1  # the range test ran once
    assert study.user_attrs["lr_find_running"] is None
    assert sum("running the LR range test on trial" in output for output in outputs) == 1
    assert sum(
        "note: the LR range test ran before on trial" in output or "note: the LR range test is running in another" in output
        for output in outputs
    ) == 1
