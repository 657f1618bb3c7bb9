"""Inside the trial process: the LR range test (Smith), an exponential sweep of the learning rate."""

from __future__ import annotations

import math
import time
from typing import Any

from autotune.runner._harness import Emit, trial_training
from autotune.runner._outcome import TrialJob
from autotune.training._apply import Training, fixed_samples_loss
from autotune.training._distributed import Group
from autotune.workload._workload import Workload


def run_lr_sweep(job: TrialJob, workload: Workload, emit: Emit) -> None:
    """One optimizer step per learning rate, from ``min_lr`` to ``max_lr`` geometrically, recording
    the loss and its bias-corrected exponential moving average; stops once the average exceeds
    ``stop_factor`` x its best (as Lightning's lr_find and torch-lr-finder do)."""
    sweep: dict[str, Any] = job.lr_sweep or {}
    if sweep.get("mode") in ("check", "progress"):
        with trial_training(job, workload, emit, one_cycle_steps=sweep["steps"]) as training:
            _check(training, sweep["steps"], emit, sweep.get("eval_samples"))
        return
    min_lr, max_lr, steps = sweep["min_lr"], sweep["max_lr"], sweep["steps"]
    beta, stop_factor = sweep.get("beta", 0.98), sweep.get("stop_factor", 4.0)
    with trial_training(job, workload, emit, one_cycle_steps=None) as training:
        _sweep(training, min_lr, max_lr, steps, beta, stop_factor, emit)


def _sweep(
    training: Training, min_lr: float, max_lr: float, steps: int, beta: float, stop_factor: float, emit: Emit
) -> None:
    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    average, best = 0.0, math.inf
    stopped_early = False
    for index in range(steps):
        lr = min_lr * (max_lr / min_lr) ** (index / max(1, steps - 1))
        training.set_lr(lr)
        # .item(): one value per step, synchronised; a group's is its ranks' mean, so they stop together.
        (loss,) = Group.current().mean([float(training.step())])
        lrs.append(lr)
        losses.append(loss)
        if not math.isfinite(loss):
            stopped_early = True
            break
        average = beta * average + (1 - beta) * loss
        value = average / (1 - beta ** (index + 1))  # bias correction of the moving average
        smoothed.append(value)
        best = min(best, value)
        if index > 0 and value > stop_factor * best:
            stopped_early = True
            break
    emit({"event": "lr_curve", "lrs": lrs, "losses": losses, "smoothed": smoothed, "stopped_early": stopped_early})
    emit({"event": "done"})


def _check(training: Training, steps: int, emit: Emit, eval_samples: int | None = None) -> None:
    """A short run on the exported schedule (OneCycle compressed to ``steps``, peaking at the
    config's max_lr): each step's LR and loss, stopped at a NaN or infinite loss; with
    ``eval_samples``, then the loss over that many fixed samples of the dataset (``fixed_loss``)."""
    lrs: list[float] = []
    losses: list[float] = []
    began = time.perf_counter()
    for _ in range(steps):
        lrs.append(training.optimizer.param_groups[0]["lr"])
        # .item(): one value per step, synchronised; a group's is its ranks' mean, so they stop together.
        losses.append(Group.current().mean([float(training.step())])[0])
        if not math.isfinite(losses[-1]):
            break
    seconds = time.perf_counter() - began
    curve = {"lrs": lrs, "losses": losses, "smoothed": [], "stopped_early": len(losses) < steps, "seconds": seconds}
    if eval_samples and len(losses) == steps:
        curve["eval_loss"] = fixed_samples_loss(training, eval_samples)
    emit({"event": "lr_curve", **curve})
    emit({"event": "done"})
