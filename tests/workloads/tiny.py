"""Tiny CPU workloads for the test suite: a linear model on random data, a few ms per step."""

from __future__ import annotations

import dataclasses
import os
import signal
import time

import torch
import torch.nn.functional as F
from torch import nn

from autotune import Workload


class Points(torch.utils.data.Dataset):
    def __init__(self, size: int = 512) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(size, 8, generator=generator)
        self.y = (self.x.sum(dim=1) > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return self.x[index], self.y[index]


def _loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def workload() -> Workload:
    return Workload(
        model=lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)),
        dataset=Points,
        loss=_loss,
        base_lr=1e-2,
        baseline={"batch_size": 8},
        epochs=2,
    )


def _hungry_loss(model, batch):
    """Holds batch_size x 4 MiB during the step: resident memory grows with the batch size."""
    x, y = batch
    ballast = torch.ones(len(x), 1024, 1024)  # float32: 4 MiB per sample, touched, so resident
    return F.cross_entropy(model(x), y) + 0 * ballast.sum()


def memory_hungry() -> Workload:
    return Workload(
        model=lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)),
        dataset=Points,
        loss=_hungry_loss,
        base_lr=1e-2,
        baseline={"batch_size": 4},
    )


def _oom_loss(model, batch):
    """Raises the error CUDA raises, from batch size 32 on (no GPU needed)."""
    x, y = batch
    if len(x) >= 32:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    return F.cross_entropy(model(x), y)


def raises_oom() -> Workload:
    return Workload(model=lambda: nn.Linear(8, 2), dataset=Points, loss=_oom_loss, baseline={"batch_size": 8})


def _misbehaving_loss(model, batch):
    """batch 16: abort; 24: hang; 40: exit without a word; 48: raise; anything else trains."""
    x, y = batch
    if len(x) == 16:
        os.abort()
    if len(x) == 24:
        time.sleep(3600)
    if len(x) == 40:
        os._exit(3)
    if len(x) == 48:
        raise ValueError("bad batch")
    return F.cross_entropy(model(x), y)


def misbehaving() -> Workload:
    return Workload(
        model=lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)),
        dataset=Points,
        loss=_misbehaving_loss,
        baseline={"batch_size": 8},
    )


def _diverging_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y) * float("nan") if len(x) == 16 else F.cross_entropy(model(x), y)


def diverging() -> Workload:
    return Workload(model=lambda: nn.Linear(8, 2), dataset=Points, loss=_diverging_loss, baseline={"batch_size": 8})


def _killed_loss(model, batch):
    """Dies as the host's out-of-memory killer would kill it."""
    os.kill(os.getpid(), signal.SIGKILL)


def killed() -> Workload:
    return Workload(model=lambda: nn.Linear(8, 2), dataset=Points, loss=_killed_loss)


not_a_workload = 42


def raises_on_call() -> Workload:
    raise RuntimeError("dataset path /data/imagenet does not exist")


# --- Workloads that try to leave processes and files behind (test_runner.py) -------------------


class _AnnouncingPoints(Points):
    """Points that print where the trial's temporary files go, and the pid of each DataLoader worker."""

    def __init__(self) -> None:
        super().__init__()
        import multiprocessing.util
        import tempfile

        print(f"scratch {tempfile.gettempdir()}", flush=True)
        print(f"multiprocessing temp {multiprocessing.util.get_temp_dir()}", flush=True)
        self._announced = False

    def __getitem__(self, index: int):
        if not self._announced and torch.utils.data.get_worker_info() is not None:
            self._announced = True  # each worker has its own copy of the dataset
            print(f"worker pid {os.getpid()}", flush=True)
        return super().__getitem__(index)


def _exit_after_a_moment_loss(model, batch):
    """The workers have delivered a batch; a moment later the trial exits without cleaning up."""
    time.sleep(0.5)
    os._exit(3)


def leaves_workers() -> Workload:
    """Run with num_workers > 0: exits with code 3 while its DataLoader workers are alive."""
    return Workload(model=lambda: nn.Linear(8, 2), dataset=_AnnouncingPoints, loss=_exit_after_a_moment_loss)


class _EscapingPoints(Points):
    """Starts a grandchild in a session of its own: outside the trial's process group."""

    def __init__(self) -> None:
        super().__init__()
        import subprocess
        import sys

        grandchild = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)"],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        print(f"grandchild pid {grandchild.pid}", flush=True)


def _exit_after_a_while_loss(model, batch):
    """The grandchild has lived well over the runner's 50 ms poll when the trial exits."""
    time.sleep(1.0)
    os._exit(3)


def escapes_session() -> Workload:
    return Workload(model=lambda: nn.Linear(8, 2), dataset=_EscapingPoints, loss=_exit_after_a_while_loss)


def _realtime_signal_loss(model, batch):
    """Dies from a real-time signal (default action: terminate), one that signal.Signals has no name for."""
    os.kill(os.getpid(), signal.SIGRTMIN + 6)
    time.sleep(60)


def realtime_signal() -> Workload:
    return Workload(model=lambda: nn.Linear(8, 2), dataset=Points, loss=_realtime_signal_loss)


def _accuracy(model):
    """The share of held points classified right (the first 64 of the same distribution)."""
    points = Points(64)
    return {"accuracy": (model(points.x).argmax(dim=1) == points.y).float().mean()}


def evaluated() -> Workload:
    """tiny with a validation metric, which autotune train runs every epoch and at the end."""
    return Workload(
        model=lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)),
        dataset=Points,
        loss=_loss,
        base_lr=1e-2,
        evaluate=_accuracy,
    )


def twelve() -> Workload:
    """tiny with the recipe of nanoGPT's CPU example: batch 12, no accumulation, no effective batch set."""
    return dataclasses.replace(workload(), baseline={"batch_size": 12}, epochs=1)


def accumulating() -> Workload:
    """tiny whose recipe accumulates 32 micro-batches of 8: an effective batch of 256, slow to step."""
    return dataclasses.replace(workload(), baseline={"batch_size": 8, "accumulation_steps": 32})
