"""autotune.runner._harness: the measuring side of a trial, run in this process on tiny workloads: the events it
sends (warm-up steps, timed windows, the end), its windows' counts, divergence, evaluation, the noise scale, the
seed and the step closure a job sets. Window lengths are set by step counts, never by the clock."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import workload_spec
from torch import nn
from workloads.tiny import Points

from autotune import Workload
from autotune.runner import MeasureSettings, TrialJob
from autotune.runner._harness import Diverged, run_harness, trial_training
from autotune.workload._workload import load_workload

# Every window exactly 3 steps: its minimum and maximum are both 3 (its 60 s are never reached).
THREE_STEPS = MeasureSettings(warmup_steps=1, windows=2, window_seconds=60.0, min_window_steps=3, max_window_steps=3)


def measure(
    workload: Workload | str, config: dict[str, Any], settings: MeasureSettings = THREE_STEPS, **job: Any
) -> list[dict[str, Any]]:
    """The events run_harness sends for a job of ``workload`` (a Workload, or a tests/workloads/tiny.py name)."""
    loaded = load_workload(workload_spec(workload)) if isinstance(workload, str) else workload
    events: list[dict[str, Any]] = []
    run_harness(TrialJob(workload="unused", config=config, measure=settings, **job), loaded, events.append)
    return events


def of_kind(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [event for event in events if event["event"] == kind]


def rising(factor: float) -> Workload:
    """tiny whose loss is multiplied by ``factor`` at each step: it diverges by the divergence factor."""
    calls = {"n": 0}

    def loss(model, batch):
        x, y = batch
        calls["n"] += 1
        return F.cross_entropy(model(x), y) * factor ** calls["n"]

    return dataclasses.replace(load_workload(workload_spec()), loss=loss)


# --- The events of a trial that runs to the end ---------------------------------------------------------


def test_run_harness_sends_started_warm_up_windows_and_done_in_order():
    events = measure("workload", {"batch_size": 8})
    assert [event["event"] for event in events] == ["started", "warmup_step", "warmup", "window", "window", "done"]
    started = events[0]
    assert started == {"event": "started", "device": "cpu", "torch_version": torch.__version__, "unit": "samples"}


def test_run_harness_windows_count_every_sample_of_their_steps():
    events = measure("workload", {"batch_size": 8, "accumulation_steps": 2})
    windows = of_kind(events, "window")
    assert [window["index"] for window in windows] == [0, 1]
    for window in windows:
        assert window["steps"] == 3
        assert window["samples"] == window["units"] == 3 * 8 * 2  # batch_size x accumulation_steps a step
        assert window["seconds"] > 0
        assert 0 <= window["data_wait_seconds"] <= window["seconds"]
        assert math.isfinite(window["loss"]) and window["loss"] > 0
    [step] = of_kind(events, "warmup_step")
    assert (step["index"], step["samples"], step["compiled"]) == (0, 16, False)


def test_run_harness_warm_up_reports_what_the_run_is_built_of():
    events = measure("workload", {"batch_size": 8})
    [warmup] = of_kind(events, "warmup")
    assert warmup["warmup_seconds"] > 0
    assert warmup["compile_seconds"] == 0.0  # nothing compiled
    assert math.isfinite(warmup["loss_start"]) and warmup["loss_start"] > 0
    assert warmup["dataset_size"] == 512
    assert warmup["cycle_momentum"] is True and warmup["adaptive_optimizer"] is True  # AdamW: betas
    sgd = dataclasses.replace(load_workload(workload_spec()), optimizer=lambda params, lr: torch.optim.SGD(params, lr))
    [plain] = of_kind(measure(sgd, {"batch_size": 8}), "warmup")
    assert plain["cycle_momentum"] is False and plain["adaptive_optimizer"] is False


def test_run_harness_done_reports_the_end_of_an_fp32_cpu_trial():
    events = measure("workload", {"batch_size": 8})
    done = events[-1]
    assert done["event"] == "done"
    assert done["loss_end"] == of_kind(events, "window")[-1]["loss"]
    assert done["noise"] is None and done["evaluation_seconds"] is None
    assert done["scaler_skipped_steps"] is None  # no GradScaler without fp16
    assert done["device_peak_memory_bytes"] is None  # the CPU's peak is the process tree's, sampled outside
    assert done["process_peak_rss_bytes"] > 0


def test_run_harness_runs_the_warm_up_steps_asked_for():
    settings = dataclasses.replace(THREE_STEPS, warmup_steps=3)
    steps = of_kind(measure("workload", {"batch_size": 8}, settings), "warmup_step")
    assert [step["index"] for step in steps] == [0, 1, 2]
    no_warmup = dataclasses.replace(THREE_STEPS, warmup_steps=0)
    assert len(of_kind(measure("workload", {"batch_size": 8}, no_warmup), "warmup_step")) == 1  # at least one


def test_run_harness_stops_at_the_set_windows_once_the_trial_is_told_apart_from_the_best():
    settings = dataclasses.replace(THREE_STEPS, windows=2, max_windows=4, target_spread=1e-12)
    # No rate to rank against, and a spread target no wall-clock windows meet: every allowed window runs.
    assert len(of_kind(measure("workload", {"batch_size": 8}, settings), "window")) == 4
    # A best rate far beyond any this trial reaches: told apart after the set two.
    told_apart = measure("workload", {"batch_size": 8}, settings, rank_against=1e15)
    assert len(of_kind(told_apart, "window")) == 2


def test_run_harness_same_seed_same_losses():
    first = measure("workload", {"batch_size": 8})
    again = measure("workload", {"batch_size": 8})
    other = measure("workload", {"batch_size": 8}, dataclasses.replace(THREE_STEPS, seed=1))
    assert [e["loss"] for e in of_kind(first, "window")] == [e["loss"] for e in of_kind(again, "window")]
    assert of_kind(first, "warmup")[0]["loss_start"] == of_kind(again, "warmup")[0]["loss_start"]
    assert of_kind(first, "warmup")[0]["loss_start"] != of_kind(other, "warmup")[0]["loss_start"]


# --- Divergence ------------------------------------------------------------------------------------------


def test_run_harness_nan_loss_diverges_in_the_warm_up():
    with pytest.raises(Diverged, match=r"^loss became nan in warm-up step 1$"):
        measure("diverging", {"batch_size": 16})


def test_run_harness_loss_risen_above_the_divergence_factor_diverges():
    with pytest.raises(Diverged) as info:
        measure(rising(10.0), {"batch_size": 8}, dataclasses.replace(THREE_STEPS, divergence_factor=4.0))
    # The first window's mean loss is already well above 4x the first step's.
    assert str(info.value).startswith("loss rose to ")
    assert " in timed window 1, above 4x its starting value " in str(info.value)


def test_run_harness_without_a_divergence_factor_lets_a_finite_loss_rise():
    events = measure(rising(1.5), {"batch_size": 8}, dataclasses.replace(THREE_STEPS, divergence_factor=None))
    assert events[-1]["event"] == "done"
    assert events[-1]["loss_end"] > 4 * of_kind(events, "warmup")[0]["loss_start"]


# --- Evaluation, the noise scale, the step closure -----------------------------------------------------------


def test_run_harness_times_one_evaluation_when_the_workload_has_one():
    done = measure("evaluated", {"batch_size": 8})[-1]
    assert done["evaluation_seconds"] is not None and done["evaluation_seconds"] >= 0


def test_run_harness_measures_the_noise_scale_after_the_windows_when_asked():
    done = measure("workload", {"batch_size": 8, "accumulation_steps": 2}, noise_seconds=0.01)[-1]
    noise = done["noise"]
    assert (noise["micro_batch"], noise["micro_batches"]) == (8, 2)
    assert noise["groups"] >= 1 and len(noise["gradient_sq"]) == noise["groups"]


def test_run_harness_records_a_noise_scale_that_cannot_be_measured_as_its_error():
    class Frozen(nn.Module):
        """Trains nothing the optimizer holds: its parameters are frozen after the optimizer is built."""

        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(8, 2)

        def forward(self, x):
            return self.linear(x)

    def frozen_optimizer(params, lr):
        params = list(params)
        optimizer = torch.optim.SGD(params, lr)
        for parameter in params:
            parameter.requires_grad_(False)
        return optimizer

    def loss(model, batch):
        x, y = batch
        return F.cross_entropy(model(x), y).detach().requires_grad_()

    workload = Workload(model=Frozen, dataset=Points, loss=loss, optimizer=frozen_optimizer)
    done = measure(workload, {"batch_size": 8}, noise_seconds=0.01)[-1]
    assert done["event"] == "done"  # the speed was measured: the trial still ends
    assert done["noise"] == {"error": "ValueError: the optimizer has no parameters that require grad"}


def test_run_harness_steps_with_a_closure_when_the_job_says_so():
    sam = load_workload(workload_spec("unflagged", "sam.py"))  # its optimizer asserts that it got a closure
    with pytest.raises(AssertionError, match="SAM requires a closure"):
        measure(sam, {"batch_size": 16})
    assert measure(sam, {"batch_size": 16}, step_closure=True)[-1]["event"] == "done"


def test_trial_training_builds_the_jobs_config_and_says_it_started():
    events: list[dict[str, Any]] = []
    job = TrialJob(workload="unused", config={"batch_size": 16, "accumulation_steps": 2}, measure=THREE_STEPS)
    with trial_training(job, load_workload(workload_spec()), events.append, one_cycle_steps=5) as training:
        assert events == [{"event": "started", "device": "cpu", "torch_version": torch.__version__, "unit": "samples"}]
        assert (training.config.batch_size, training.config.accumulation_steps) == (16, 2)
        assert training.scheduler is not None and training.scheduler.total_steps == 5
    with trial_training(job, load_workload(workload_spec()), events.append, one_cycle_steps=None) as training:
        assert training.scheduler is None  # a constant LR: the range test sets it
