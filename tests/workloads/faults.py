"""Tiny CPU workloads that fault on purpose: the search's reliability tests (test_recovery.py, test_checks.py).

They reuse tiny.py's model and data; each one breaks in one way a real job breaks.
"""

from __future__ import annotations

import ctypes
import os
import signal
import time

import psutil
import torch
import torch.nn.functional as F
from tiny import Points
from torch import nn

from autotune import Workload


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))


def _loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


# --- The search process dies while a trial runs -----------------------------------------------


def _slow_loss(model, batch):
    """A step of 0.3 s: a trial lasts long enough to be killed in the middle."""
    time.sleep(0.3)
    return _loss(model, batch)


def slow() -> Workload:
    """Run with num_workers > 0: the trial process has DataLoader workers to leave behind."""
    return Workload(model=_model, dataset=Points, loss=_slow_loss, baseline={"batch_size": 8, "num_workers": 2})


# --- A DataLoader worker killed by the out-of-memory killer -----------------------------------


class _WorkerKilledPoints(Points):
    """A worker that has delivered some batches is killed with SIGKILL, as the OOM killer kills it."""

    def __getitem__(self, index: int):
        if torch.utils.data.get_worker_info() is not None:
            self.delivered = getattr(self, "delivered", 0) + 1
            if self.delivered > 16:
                os.kill(os.getpid(), signal.SIGKILL)
        return super().__getitem__(index)


def _paced_loss(model, batch):
    time.sleep(0.02)  # the main process is in a step, not waiting on the worker, when it dies
    return _loss(model, batch)


def worker_killed() -> Workload:
    return Workload(
        model=_model, dataset=_WorkerKilledPoints, loss=_paced_loss, baseline={"batch_size": 4, "num_workers": 1}
    )


# --- A config that crashes its process ----------------------------------------------------------


def _segfault_loss(model, batch):
    """batch 16: a segmentation fault (a read of address 0), as a broken extension would."""
    x, y = batch
    if len(x) == 16:
        ctypes.string_at(0)
    return _loss(model, batch)


def segfaults() -> Workload:
    return Workload(model=_model, dataset=Points, loss=_segfault_loss, baseline={"batch_size": 8})


# --- Workload bugs -------------------------------------------------------------------------------


def _per_sample_loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")  # shape (batch_size,): a forgotten mean


def non_scalar_loss() -> Workload:
    return Workload(model=_model, dataset=Points, loss=_per_sample_loss, baseline={"batch_size": 32})


def _float_loss(model, batch):
    return _loss(model, batch).item()


def float_loss() -> Workload:
    return Workload(model=_model, dataset=Points, loss=_float_loss, baseline={"batch_size": 8})


def small_dataset() -> Workload:
    return Workload(model=_model, dataset=lambda: Points(10), loss=_loss, baseline={"batch_size": 32})


_calls = {"loss": 0}


def _fails_later_loss(model, batch):
    """Trains for two steps (the workload check), then fails on every later step, whatever the config."""
    _calls["loss"] += 1
    if _calls["loss"] > 2:
        raise ValueError("labels out of range for 2 classes")
    return _loss(model, batch)


def fails_after_two_steps() -> Workload:
    return Workload(model=_model, dataset=Points, loss=_fails_later_loss, baseline={"batch_size": 8})


# --- Two searches on one machine ----------------------------------------------------------------


def _watching_loss(model, batch):
    """Every step, notes in $OVERLAP_DIR any other trial process that is alive now: with one trial
    per device at a time, there is none."""
    folder = os.environ["OVERLAP_DIR"]
    mine = os.path.join(folder, f"trial-{os.getpid()}")
    if not os.path.exists(mine):
        open(mine, "w").close()
    for name in os.listdir(folder):
        if not name.startswith("trial-") or name == f"trial-{os.getpid()}":
            continue
        pid = int(name.removeprefix("trial-"))
        try:
            other = psutil.Process(pid)
            alive = other.status() != psutil.STATUS_ZOMBIE and "autotune.runner._child" in " ".join(other.cmdline())
        except psutil.Error:
            alive = False
        if alive:
            with open(os.path.join(folder, "overlaps"), "a") as overlaps:
                overlaps.write(f"{os.getpid()} ran while {pid} ran\n")
    time.sleep(0.05)
    return _loss(model, batch)


def watches_overlap() -> Workload:
    return Workload(model=_model, dataset=Points, loss=_watching_loss, baseline={"batch_size": 8})
