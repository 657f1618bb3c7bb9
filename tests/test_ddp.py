"""Data-parallel trials (--nproc-per-trial): 2 gloo ranks on the CPU, each a tiny workload."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest
from conftest import workload_spec

from autotune.export._accelerate import accelerate_export
from autotune.export._hf import hf_export
from autotune.export._lightning import lightning_export
from autotune.knobs._config import TrainConfig
from autotune.runner import MeasureSettings, Status, TrialJob, run_trial
from autotune.store._records import TrialRecord

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the rank guard is Linux's")

FAST = MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_window_steps=10)
REPO = Path(__file__).resolve().parents[1]


def _group_job(name: str, **config) -> TrialJob:
    return TrialJob(
        workload=workload_spec(name, "ddp.py" if name != "workload" else "tiny.py"),
        config={"batch_size": 8, "world_size": 2, **config},
        measure=FAST,
        timeout_seconds=120,
    )


def _marked(marker: str) -> list[psutil.Process]:
    """Processes (of this user) whose environment carries ``marker``: a search's launcher and ranks."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("AUTOTUNE_TEST_MARKER") == marker:
                found.append(process)
        except (psutil.Error, OSError):
            continue
    return found


def test_group_trial_throughput_is_samples_summed_over_ranks():
    outcome = run_trial(_group_job("workload"))
    assert outcome.status is Status.OK, outcome.reason + outcome.log_tail
    for window in outcome.windows:
        assert window.samples == window.steps * 8 * 2  # both ranks' micro-batches, over the slowest rank's time
    assert outcome.samples_per_second == pytest.approx(statistics.median(w.samples_per_second for w in outcome.windows))
    assert outcome.noise is None  # not measured in a group


def test_group_trial_memory_is_the_largest_ranks_peak():
    outcome = run_trial(_group_job("heavy_rank"))
    assert outcome.status is Status.OK, outcome.reason + outcome.log_tail
    # Rank 1's 256 MiB of ballast, on top of its own interpreter and torch: the largest rank's peak.
    assert outcome.peak_memory_bytes is not None and outcome.peak_memory_bytes > 256 * 2**20


def test_group_trial_memory_budget_is_held_per_rank():
    job = TrialJob(**{**_group_job("heavy_rank").__dict__, "memory_budget_bytes": 300 * 2**20})
    outcome = run_trial(job)
    assert outcome.status is Status.OOM
    assert "exceeded the memory budget 300.0 MiB" in outcome.reason


@pytest.mark.parametrize("how", [signal.SIGKILL, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)])
def test_search_killed_mid_trial_leaves_no_rank_alive(tmp_path, how):
    marker = uuid.uuid4().hex
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "AUTOTUNE_TEST_MARKER": marker,
    }
    search = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "autotune.cli",
            "search",
            "--workload",
            workload_spec("slow", "ddp.py"),
            "--nproc-per-trial",
            "2",
            "--trials",
            "2",
            "--window-seconds",
            "30",
            "--storage",
            f"sqlite:///{tmp_path / 'ddp.db'}",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        # Wait for a trial's two ranks (the launcher's children running autotune.runner._rank).
        while time.monotonic() < deadline:
            ranks = [p for p in _marked(marker) if "autotune.runner._rank" in " ".join(p.cmdline())]
            if len(ranks) >= 2:
                break
            time.sleep(0.2)
        assert len(ranks) >= 2, "no data-parallel trial started"
        time.sleep(1.0)  # mid-trial
        os.kill(search.pid, how)
        search.wait(timeout=30)
        until = time.monotonic() + 15
        while time.monotonic() < until and _marked(marker):
            time.sleep(0.2)
        left = [(p.pid, " ".join(p.cmdline())) for p in _marked(marker)]
        assert left == []
    finally:
        for process in _marked(marker):
            process.kill()
        if search.poll() is None:
            search.kill()


def _document(world_size: int) -> dict:
    from export_documents import make_document

    return make_document({"world_size": world_size} if world_size > 1 else {})


def test_exports_carry_the_world_size():
    document = _document(2)
    assert document["config"]["world_size"] == 2
    assert TrainConfig.from_dict(document["config"]).effective_batch_size == 8 * 2
    trainer = lightning_export(document)["Trainer"]
    assert (trainer["devices"], trainer["strategy"]) == (2, "ddp")
    assert accelerate_export(document)["launch"]["num_processes"] == 2
    assert hf_export(document)["launch"] == "torchrun --standalone --nproc-per-node 2 train.py"


def test_exports_of_one_process_are_unchanged():
    document = _document(1)
    assert "world_size" not in document["config"]
    assert lightning_export(document)["Trainer"]["devices"] == 1
    assert "strategy" not in lightning_export(document)["Trainer"]
    assert "launch" not in accelerate_export(document) and "launch" not in hf_export(document)


def test_trial_record_effective_batch_counts_the_ranks():
    record = TrialRecord(config={"batch_size": 4, "accumulation_steps": 2, "world_size": 2})
    assert (record.world_size, record.effective_batch) == (2, 16)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--nproc-per-trial", "0"], "Error: --nproc-per-trial must be an integer >= 1, got 0"),
        (
            ["--nproc-per-trial", "2", "--effective-batch", "9"],
            "Error: effective batch 9 cannot be shared by --nproc-per-trial 2 ranks (not a multiple of 2); "
            "choose --effective-batch as a multiple of it",
        ),
        (
            ["--nproc-per-trial", "2", "--effective-batch", "free"],
            "Error: --nproc-per-trial 2 with a free effective batch: ranking a changed batch needs the gradient "
            "noise scale, which data-parallel trials do not measure (hold one with --effective-batch N)",
        ),
    ],
)
def test_search_refuses_data_parallel_input_in_one_line(tmp_path, args, expected):
    from click.testing import CliRunner

    from autotune.cli import main

    result = CliRunner().invoke(
        main, ["search", "--workload", workload_spec(), "--storage", f"sqlite:///{tmp_path / 'x.db'}", *args]
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == expected
