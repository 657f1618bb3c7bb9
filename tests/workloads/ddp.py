"""Tiny workloads for data-parallel trials (tests/test_ddp.py): one rank behaves differently from the others."""

from __future__ import annotations

import os
import signal
import time

import torch
from tiny import Points, _loss
from torch import nn

from autotune import Workload

_BALLAST: list[torch.Tensor] = []


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def _heavy_rank_loss(model, batch):
    """Rank 1 holds 256 MiB, touched, for the whole trial; rank 0 nothing extra."""
    if _rank() == 1 and not _BALLAST:
        _BALLAST.append(torch.ones(64, 1024, 1024))  # float32: 256 MiB resident
    return _loss(model, batch)


def heavy_rank() -> Workload:
    return Workload(model=_model, dataset=Points, loss=_heavy_rank_loss, base_lr=1e-2, baseline={"batch_size": 8})


_STEPS = {"count": 0}


def _oom_on_rank_1(model, batch):
    """Rank 1 runs out of memory at its third micro-step; rank 0 would go on (and wait for it)."""
    _STEPS["count"] += 1
    if _rank() == 1 and _STEPS["count"] == 3:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated on rank 1)")
    return _loss(model, batch)


def oom_on_rank_1() -> Workload:
    return Workload(model=_model, dataset=Points, loss=_oom_on_rank_1, base_lr=1e-2, baseline={"batch_size": 8})


def _killed_rank_1(model, batch):
    """Rank 1 is killed by SIGKILL at its third micro-step, without a word."""
    _STEPS["count"] += 1
    if _rank() == 1 and _STEPS["count"] == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return _loss(model, batch)


def killed_rank_1() -> Workload:
    return Workload(model=_model, dataset=Points, loss=_killed_rank_1, base_lr=1e-2, baseline={"batch_size": 8})


def _slow_loss(model, batch):
    """Each step sleeps: a trial that runs until it is stopped."""
    time.sleep(0.2)
    return _loss(model, batch)


def slow() -> Workload:
    return Workload(model=_model, dataset=Points, loss=_slow_loss, base_lr=1e-2, baseline={"batch_size": 8})
