"""autotune.runner._sweep: the LR range test and the short recipe runs, run in this process on tiny workloads:
the learning rates they step at, the losses and their smoothing, where they stop, what they send."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import workload_spec

from autotune import Workload
from autotune.runner import MeasureSettings, TrialJob
from autotune.runner._sweep import run_lr_sweep
from autotune.workload._workload import load_workload


def sweep(workload: Workload | str, config: dict[str, Any], lr_sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """The events run_lr_sweep sends (``workload``: a Workload, or a tests/workloads/tiny.py name)."""
    loaded = load_workload(workload_spec(workload)) if isinstance(workload, str) else workload
    events: list[dict[str, Any]] = []
    job = TrialJob(workload="unused", config=config, measure=MeasureSettings(), lr_sweep=lr_sweep)
    run_lr_sweep(job, loaded, events.append)
    return events


def curve_of(events: list[dict[str, Any]]) -> dict[str, Any]:
    assert [event["event"] for event in events] == ["started", "lr_curve", "done"]
    return events[1]


def exploding(factor: float) -> Workload:
    """tiny whose loss is multiplied by ``factor`` at each step: its smoothed loss soon exceeds any bound."""
    state: dict[str, Any] = {"n": 0}

    def loss(model, batch):
        x, y = batch
        state["n"] += 1
        return F.cross_entropy(model(x), y) * factor ** state["n"]

    return dataclasses.replace(load_workload(workload_spec()), loss=loss)


# --- The range test ----------------------------------------------------------------------------------------


def test_lr_sweep_steps_geometrically_from_min_to_max_lr():
    curve = curve_of(sweep("workload", {"batch_size": 8}, {"min_lr": 1e-4, "max_lr": 1e-1, "steps": 7}))
    assert curve["lrs"] == pytest.approx([1e-4 * 1000 ** (i / 6) for i in range(7)])
    assert curve["lrs"][0] == pytest.approx(1e-4) and curve["lrs"][-1] == pytest.approx(1e-1)
    assert len(curve["losses"]) == len(curve["smoothed"]) == 7
    assert all(math.isfinite(loss) and loss > 0 for loss in curve["losses"])
    assert curve["stopped_early"] is False


def test_lr_sweep_smooths_the_losses_with_a_bias_corrected_moving_average():
    curve = curve_of(sweep("workload", {"batch_size": 8}, {"min_lr": 1e-4, "max_lr": 1e-3, "steps": 6, "beta": 0.5}))
    average, expected = 0.0, []
    for index, loss in enumerate(curve["losses"]):
        average = 0.5 * average + 0.5 * loss
        expected.append(average / (1 - 0.5 ** (index + 1)))
    assert curve["smoothed"] == pytest.approx(expected)
    assert curve["smoothed"][0] == pytest.approx(curve["losses"][0])  # the first value is the loss itself


def test_lr_sweep_steps_at_each_learning_rate_it_records():
    seen: list[float] = []
    workload = load_workload(workload_spec())

    class Recording(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(self.param_groups[0]["lr"])
            return super().step(closure)

    workload = dataclasses.replace(workload, optimizer=lambda params, lr: Recording(params, lr))
    curve = curve_of(sweep(workload, {"batch_size": 8}, {"min_lr": 1e-3, "max_lr": 1.0, "steps": 4}))
    assert seen == curve["lrs"]


def test_lr_sweep_stops_once_the_smoothed_loss_exceeds_stop_factor_times_its_best():
    curve = curve_of(
        sweep(exploding(3.0), {"batch_size": 8}, {"min_lr": 1e-5, "max_lr": 1e-4, "steps": 50, "stop_factor": 4.0})
    )
    assert curve["stopped_early"] is True
    assert 2 <= len(curve["lrs"]) < 50
    assert len(curve["losses"]) == len(curve["smoothed"]) == len(curve["lrs"])
    assert curve["smoothed"][-1] > 4.0 * min(curve["smoothed"])
    assert all(value <= 4.0 * min(curve["smoothed"][: i + 1]) for i, value in enumerate(curve["smoothed"][:-1]))


def test_lr_sweep_stops_at_a_nan_loss_without_smoothing_it():
    curve = curve_of(sweep("diverging", {"batch_size": 16}, {"min_lr": 1e-4, "max_lr": 1e-1, "steps": 10}))
    assert curve["stopped_early"] is True
    assert len(curve["lrs"]) == 1 and math.isnan(curve["losses"][0])
    assert curve["smoothed"] == []


def test_lr_sweep_of_one_step_runs_at_min_lr():
    curve = curve_of(sweep("workload", {"batch_size": 8}, {"min_lr": 0.01, "max_lr": 1.0, "steps": 1}))
    assert curve["lrs"] == [0.01]


# --- The short recipe runs: mode check and progress ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["check", "progress"])
def test_lr_check_runs_the_exported_one_cycle_compressed_to_its_steps(mode):
    curve = curve_of(sweep("workload", {"batch_size": 8, "max_lr": 0.05}, {"mode": mode, "steps": 10}))
    reference = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(reference, max_lr=0.05, total_steps=10)
    expected = []
    for _ in range(10):
        expected.append(reference.param_groups[0]["lr"])
        reference.step()
        schedule.step()
    assert curve["lrs"] == pytest.approx(expected)  # from max_lr / 25 up to 0.05 and down again
    assert max(curve["lrs"]) == pytest.approx(0.05, rel=0.05)
    assert len(curve["losses"]) == 10 and curve["smoothed"] == []
    assert curve["stopped_early"] is False
    assert curve["seconds"] > 0
    assert "eval_loss" not in curve


def test_lr_check_with_eval_samples_ends_with_the_loss_over_fixed_samples():
    curve = curve_of(sweep("workload", {"batch_size": 8}, {"mode": "progress", "steps": 4, "eval_samples": 32}))
    assert math.isfinite(curve["eval_loss"]) and curve["eval_loss"] > 0


def test_lr_check_stops_at_a_nan_loss_and_skips_its_evaluation():
    curve = curve_of(sweep("diverging", {"batch_size": 16}, {"mode": "check", "steps": 5, "eval_samples": 32}))
    assert curve["stopped_early"] is True
    assert len(curve["losses"]) == 1 and math.isnan(curve["losses"][0])
    assert "eval_loss" not in curve
