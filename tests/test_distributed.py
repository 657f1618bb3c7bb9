"""Data-parallel processes: torchrun's arguments, the backend and device of each rank, the group's
reductions (the identity outside a group), and two real gloo ranks launched on this CPU."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from autotune.training._distributed import (
    BACKEND_ENV,
    Group,
    choose_backend,
    first_cause,
    killed_by_signal,
    rank_device,
    threads_per_rank,
    torchrun_arguments,
)


def test_torchrun_arguments_are_a_standalone_group_that_never_restarts():
    args = torchrun_arguments(2, ["-m", "autotune.runner._rank", "events", "job.json"])
    assert args[:3] == ["--standalone", "--nproc-per-node=2", "--max-restarts=0"]
    assert args[-4:] == ["-m", "autotune.runner._rank", "events", "job.json"]


def test_threads_per_rank_share_out_the_cores():
    assert threads_per_rank(1) >= threads_per_rank(2) >= 1
    assert threads_per_rank(10_000) == 1


def test_backend_is_gloo_on_the_cpu_and_where_ranks_would_share_a_gpu_unless_forced(monkeypatch):
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    assert choose_backend(torch.device("cpu"), 2) == "gloo"
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert choose_backend(torch.device("cuda", 0), 2) == "gloo"  # NCCL refuses two ranks on one GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert choose_backend(torch.device("cuda", 0), 2) == "nccl"
    monkeypatch.setenv(BACKEND_ENV, "gloo")
    assert choose_backend(torch.device("cuda", 0), 2) == "gloo"


def test_rank_device_is_the_ranks_own_gpu_or_the_cpu(monkeypatch):
    assert rank_device("cpu", local=1) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rank_device("cuda", local=1) == torch.device("cuda", 1)
    assert rank_device("cuda", local=3) == torch.device("cuda", 1)  # more ranks than GPUs: they share


def test_outside_a_group_every_reduction_is_its_input():
    group = Group()
    assert not group.is_group
    assert group.sum([1, 2.5]) == [1.0, 2.5] and group.max([3]) == [3.0] and group.mean([4]) == [4.0]


_RANK = textwrap.dedent(
    """
    import json, os, sys
    from autotune.training._distributed import exit_rank, start_group
    group = start_group("cpu", timeout_seconds=60)
    rank = group.rank
    if sys.argv[2] == "fail" and rank == 1:
        exit_rank(3)
    figures = {"sum": group.sum([rank + 1]), "max": group.max([10 * rank]), "mean": group.mean([rank])}
    with open(f"{sys.argv[1]}/rank{rank}.json", "w") as out:
        json.dump({**figures, "world_size": group.world_size, "backend": group.backend}, out)
    exit_rank(0)
    """
)


def _launch(tmp_path, how: str) -> dict:
    script = tmp_path / "rank.py"
    script.write_text(_RANK)
    code = (
        "import json; from autotune.training._distributed import launch; "
        f"print(json.dumps(launch(2, [{str(script)!r}, {str(tmp_path)!r}, {how!r}])))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {int(rank): how for rank, how in json.loads(done.stdout.splitlines()[-1]).items()}


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_two_gloo_ranks_agree_on_the_groups_figures(tmp_path):
    assert _launch(tmp_path, "ok") == {}
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    for figures in ranks:
        assert figures == {"sum": [3.0], "max": [10.0], "mean": [0.5], "world_size": 2, "backend": "gloo"}


@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_a_rank_that_fails_is_reported_with_its_exit_and_the_group_is_ended(tmp_path):
    failures = _launch(tmp_path, "fail")
    assert failures[1] == "exit code 3"
    assert failures.get(0) in (None, "signal SIGTERM")  # waiting on its peer: ended by the launcher
    assert not (tmp_path / "rank0.json").exists()


def test_the_first_cause_is_a_rank_killed_by_a_signal_then_an_error_exit_then_the_launchers_sigterm():
    # rank 1 killed: rank 0 exited with an error only because its peer was gone
    assert first_cause({0: "exit code 1", 1: "signal SIGKILL"}) == (1, "signal SIGKILL")
    assert first_cause({0: "signal SIGTERM", 1: "exit code 3"}) == (1, "exit code 3")
    assert first_cause({2: "exit code 1", 1: "exit code 1", 0: "signal SIGTERM"}) == (1, "exit code 1")
    assert killed_by_signal("signal SIGSEGV") and not killed_by_signal("signal SIGTERM")
    assert not killed_by_signal("exit code 1")
