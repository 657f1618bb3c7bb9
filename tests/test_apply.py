"""autotune.training._apply (public as ``from autotune import training``): the one place each knob acts."""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import workload_spec
from torch import nn

import autotune
from autotune import training
from autotune.exceptions import WorkloadError
from autotune.knobs._config import TrainConfig
from autotune.runner import TrialJob, run_trial
from autotune.training import _apply
from autotune.workload import Workload, load_workload

PACKAGE = Path(autotune.__file__).parent
APPLY = Path(sys.modules[training.Training.__module__].__file__)  # where the public training functions live


class Points(torch.utils.data.Dataset):
    def __init__(self, size: int = 64) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(size, 4, generator=generator)
        self.y = (self.x.sum(dim=1) > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return self.x[index], self.y[index]


def _loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 2)


def test_dataloader_carries_every_loader_knob() -> None:
    config = TrainConfig(batch_size=8, num_workers=2, prefetch_factor=3, persistent_workers=True, pin_memory=True)
    loader = training.dataloader(Points(), config, "cpu")
    assert loader.batch_size == 8
    assert loader.num_workers == 2
    assert loader.prefetch_factor == 3
    assert loader.persistent_workers is True
    assert loader.pin_memory is False  # pinned memory only for CUDA devices
    assert loader.drop_last is True


def test_dataloader_without_workers_drops_prefetch_and_persistence() -> None:
    config = TrainConfig(batch_size=8, num_workers=0, prefetch_factor=4, persistent_workers=True)
    loader = training.dataloader(Points(), config)
    assert loader.prefetch_factor is None
    assert loader.persistent_workers is False
    assert training.dataloader_kwargs(config) == {
        "batch_size": 8,
        "num_workers": 0,
        "pin_memory": False,
        "drop_last": True,
    }


def test_dataloader_kwargs_pins_memory_for_cuda_only() -> None:
    config = TrainConfig(batch_size=4, num_workers=1, pin_memory=True)
    assert training.dataloader_kwargs(config, "cuda")["pin_memory"] is True
    assert training.dataloader_kwargs(config, "cpu")["pin_memory"] is False
    assert training.dataloader_kwargs(config, "cuda")["prefetch_factor"] == 2


def test_prepare_model_applies_channels_last_and_training_mode() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    prepared = training.prepare_model(model, TrainConfig(channels_last=True), "cpu")
    assert prepared.training
    assert prepared[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_prepare_model_calls_the_checkpointing_hook() -> None:
    seen = []
    training.prepare_model(
        _linear(), TrainConfig(gradient_checkpointing=True), "cpu", gradient_checkpointing=seen.append
    )
    assert len(seen) == 1


def test_prepare_model_without_a_checkpointing_hook_is_refused() -> None:
    with pytest.raises(WorkloadError, match="gradient_checkpointing needs Workload.gradient_checkpointing"):
        training.prepare_model(_linear(), TrainConfig(gradient_checkpointing=True), "cpu")


def test_compile_model_off_is_the_model_itself() -> None:
    model = _linear()
    assert training.compile_model(model, TrainConfig(compile="off")) is model
    compiled = training.compile_model(model, TrainConfig(compile="default"))
    assert compiled is not model and compiled._orig_mod is model


def test_autocast_follows_precision() -> None:
    assert training.autocast_dtype(TrainConfig(precision="bf16")) is torch.bfloat16
    assert training.autocast_dtype(TrainConfig(precision="fp16")) is torch.float16
    assert training.autocast_dtype(TrainConfig(precision="tf32")) is None
    with training.autocast(TrainConfig(precision="bf16"), "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.bfloat16
    with training.autocast(TrainConfig(precision="fp32"), "cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype is torch.float32


def test_grad_scaler_only_for_fp16() -> None:
    assert training.grad_scaler(TrainConfig(precision="bf16"), "cpu") is None
    assert isinstance(training.grad_scaler(TrainConfig(precision="fp16"), "cpu"), torch.amp.GradScaler)


def test_backend_flags_set_tf32_and_restore_them() -> None:
    before = (training.tf32_enabled(), torch.backends.cudnn.benchmark)
    with training.backend_flags(TrainConfig(precision="tf32"), "cuda"):
        assert training.tf32_enabled() == (True, True)
        assert torch.backends.cudnn.benchmark is True
    assert (training.tf32_enabled(), torch.backends.cudnn.benchmark) == before
    with training.backend_flags(TrainConfig(precision="fp32"), "cuda"):
        assert training.tf32_enabled() == (False, False)  # fp32 is true fp32
    assert (training.tf32_enabled(), torch.backends.cudnn.benchmark) == before


def test_backend_flags_use_the_precision_api_that_other_libraries_set() -> None:
    # Once torch's fp32_precision API is in use (transformers sets it), reading the legacy
    # allow_tf32 flag raises: backend_flags must work through the new one.
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip(f"torch {torch.__version__} has no fp32_precision API")
    saved = training.tf32_enabled()
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    try:
        with training.backend_flags(TrainConfig(precision="fp32"), "cuda"):
            assert torch.backends.cuda.matmul.fp32_precision == "ieee"
            assert torch.backends.cudnn.conv.fp32_precision == "ieee"
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"
    finally:
        training.set_tf32(saved)


def test_backend_flags_restore_after_an_exception() -> None:
    before = torch.backends.cudnn.benchmark
    with pytest.raises(RuntimeError), training.backend_flags(TrainConfig(precision="tf32"), "cuda"):
        raise RuntimeError("boom")
    assert torch.backends.cudnn.benchmark == before


def test_backend_flags_leave_the_cpu_alone() -> None:
    before = training.tf32_enabled()
    with training.backend_flags(TrainConfig(precision="tf32"), "cpu"):
        assert training.tf32_enabled() == before


@pytest.mark.parametrize(
    ("make", "cycles"),
    [
        (lambda p: torch.optim.SGD(p, lr=0.1), False),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), True),
        (lambda p: torch.optim.AdamW(p, lr=0.1), True),
        (lambda p: torch.optim.Adagrad(p, lr=0.1), False),
    ],
)
def test_one_cycle_cycles_momentum_only_where_the_optimizer_has_it(make, cycles) -> None:
    optimizer = make(_linear().parameters())
    schedule = training.one_cycle(optimizer, TrainConfig(max_lr=0.1), 10)
    assert schedule.cycle_momentum is cycles
    if not cycles and "momentum" in optimizer.defaults:
        for _ in range(5):
            optimizer.step()
            schedule.step()
        assert optimizer.param_groups[0]["momentum"] == 0  # plain SGD stays plain SGD


def test_one_cycle_takes_an_exports_section() -> None:
    section = {
        "max_lr": 0.05,
        "pct_start": 0.25,
        "div_factor": 10.0,
        "final_div_factor": 100.0,
        "anneal_strategy": "linear",
        "cycle_momentum": None,
    }
    optimizer = torch.optim.AdamW(_linear().parameters(), lr=0.05)
    schedule = training.one_cycle(optimizer, TrainConfig(max_lr=0.05), 8, **section)
    assert schedule.total_steps == 8
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05 / 10)  # max_lr / div_factor
    optimizer.step()
    schedule.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)  # the peak, at step pct_start x 8 - 1


def test_train_step_with_accumulation_matches_one_big_batch() -> None:
    data = Points(32)
    big = TrainConfig(batch_size=16, accumulation_steps=1, max_lr=0.1)
    small = dataclasses.replace(big, batch_size=4, accumulation_steps=4)
    models = []
    for config in (big, small):
        model = training.prepare_model(_linear(), config, "cpu")
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        step = training.TrainStep(model, _loss, optimizer, config, "cpu")
        loader = training.dataloader(data, config, shuffle=False)
        group = next(training.optimizer_steps(loader, config))
        assert len(group) == config.accumulation_steps
        step(group)
        models.append(model)
    torch.testing.assert_close(models[0].weight, models[1].weight)


def test_train_step_steps_the_schedule_and_stops_at_its_end() -> None:
    config = TrainConfig(batch_size=8, max_lr=0.1)
    model = _linear()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    schedule = training.one_cycle(optimizer, config, 3)
    step = training.TrainStep(model, _loss, optimizer, config, "cpu", scheduler=schedule)
    batches = training.Batches(training.dataloader(Points(), config))
    for _ in range(6):  # past the schedule's end: OneCycleLR would raise if stepped further
        step(batches)
    assert schedule.last_epoch == 2


def test_train_step_with_too_few_micro_batches_is_refused() -> None:
    config = TrainConfig(batch_size=8, accumulation_steps=3)
    model = _linear()
    step = training.TrainStep(model, _loss, torch.optim.SGD(model.parameters(), lr=0.1), config, "cpu")
    batch = next(iter(training.dataloader(Points(), config)))
    with pytest.raises(ValueError, match="takes 3 micro-batches"):
        step([batch, batch])


def test_train_step_fp16_uses_a_grad_scaler() -> None:
    config = TrainConfig(batch_size=8, precision="fp16")
    model = _linear()
    step = training.TrainStep(model, _loss, torch.optim.SGD(model.parameters(), lr=0.1), config, "cpu")
    assert isinstance(step.scaler, torch.amp.GradScaler)
    loss = step(training.Batches(training.dataloader(Points(), config)))
    assert torch.isfinite(loss)
    assert set(step.state_dict()) == {"optimizer", "scheduler", "scaler"}


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        (
            lambda model, batch: F.cross_entropy(model(batch[0]), batch[1], reduction="none"),
            "loss must return a scalar tensor, got shape (8,)",
        ),
        (lambda model, batch: 0.5, "loss must return a scalar tensor, got float 0.5"),
        (lambda model, batch: torch.tensor(1.0), "loss must return a tensor that requires grad"),
    ],
)
def test_train_step_refuses_a_loss_that_is_not_a_scalar_tensor(loss, message) -> None:
    config = TrainConfig(batch_size=8)
    model = _linear()
    step = training.TrainStep(model, loss, torch.optim.SGD(model.parameters(), lr=0.1), config, "cpu")
    with pytest.raises(WorkloadError) as caught:
        step(training.Batches(training.dataloader(Points(), config)))
    assert str(caught.value).startswith(message)


def test_to_device_moves_nested_batches_and_applies_channels_last() -> None:
    batch = {"pixels": torch.randn(2, 3, 4, 4), "targets": [{"boxes": torch.zeros(1, 4)}], "name": "x"}
    moved = training.to_device(batch, "cpu", TrainConfig(channels_last=True))
    assert moved["pixels"].is_contiguous(memory_format=torch.channels_last)
    assert moved["targets"][0]["boxes"].shape == (1, 4)
    assert moved["name"] == "x"


def test_batches_count_units_and_passes() -> None:
    config = TrainConfig(batch_size=16)
    batches = training.Batches(training.dataloader(Points(32), config), count=lambda batch: 3)
    for _ in range(5):
        next(batches)
    assert batches.samples == 80
    assert batches.units == 15
    assert batches.passes == 2


def test_trainable_parameters_leave_frozen_ones_out() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    model[0].requires_grad_(False)
    assert training.trainable_parameters(model) == list(model[1].parameters())


def test_training_builds_a_workload_as_configured() -> None:
    workload = Workload(
        model=_linear,
        dataset=Points,
        loss=_loss,
        base_lr=0.01,
        optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr),
    )
    config = TrainConfig(batch_size=8, accumulation_steps=2, max_lr=0.01)
    run = training.Training(workload, config, "cpu", total_steps=4)
    assert run.steps_per_epoch == 64 // 8 // 2
    assert run.cycle_momentum is False
    assert run.scheduler is not None and run.scheduler.total_steps == 4
    run.step()
    assert run.batches.samples == 16


def test_training_refuses_a_dataset_smaller_than_the_batch() -> None:
    workload = Workload(model=_linear, dataset=lambda: Points(4), loss=_loss)
    with pytest.raises(WorkloadError, match="dataset has 4 samples, fewer than batch_size 8"):
        training.Training(workload, TrainConfig(batch_size=8), "cpu")


# Each knob acts in the apply module only: these calls appear nowhere else in the package
# (the export forms in autotune/export/ write code lines for other frameworks as text; they apply nothing).
KNOB_CALLS = [
    r"torch\.compile\(",
    r"allow_tf32",
    r"fp32_precision\s*=",
    r"cudnn\.benchmark",
    r"GradScaler\(",
    r"torch\.autocast\(",
    r"OneCycleLR\(",
    r"DataLoader\(",
    r"memory_format=",
    r"\.gradient_checkpointing_enable\(\)",
]


@pytest.mark.parametrize("pattern", KNOB_CALLS)
def test_knobs_act_only_in_the_training_module(pattern: str) -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if path != APPLY and "export" not in path.relative_to(PACKAGE).parts and re.search(pattern, path.read_text())
    ]
    assert offenders == []
    assert re.search(pattern, APPLY.read_text())


def test_the_harness_applies_knobs_through_the_training_module() -> None:
    from autotune.runner import _harness

    assert (_harness.Training, _harness.backend_flags, _harness.evaluate) == (
        training.Training,
        training.backend_flags,
        training.evaluate,
    )


def test_train_step_with_a_closure_replays_the_micro_batches() -> None:
    calls = []

    def counting_loss(model, batch):
        calls.append(len(batch[0]))
        return _loss(model, batch)

    config = TrainConfig(batch_size=8, accumulation_steps=2)
    model = _linear()
    stepped = []

    class Replaying(torch.optim.SGD):
        def step(self, closure=None):
            stepped.append(float(closure()))  # one more forward and backward over both micro-batches
            return super().step()

    step = training.TrainStep(model, counting_loss, Replaying(model.parameters(), lr=0.1), config, "cpu", closure=True)
    loss = step(training.Batches(training.dataloader(Points(), config)))
    assert calls == [8, 8, 8, 8]
    assert stepped == [pytest.approx(float(loss))]  # same weights, same micro-batches: same loss


def test_train_step_runs_lbfgs_with_its_closure() -> None:
    config = TrainConfig(batch_size=32, max_lr=0.5)
    model = _linear()
    step = training.TrainStep(
        model, _loss, torch.optim.LBFGS(model.parameters(), lr=0.5, max_iter=4), config, "cpu", closure=True
    )
    batches = training.Batches(training.dataloader(Points(), config, shuffle=False))
    first = float(step(batches))
    for _ in range(3):
        last = float(step(batches))
    assert last < first


def test_train_step_refuses_a_closure_in_fp16() -> None:
    model = _linear()
    with pytest.raises(WorkloadError, match="GradScaler.step does not take closures"):
        training.TrainStep(
            model,
            _loss,
            torch.optim.SGD(model.parameters(), lr=0.1),
            TrainConfig(precision="fp16"),
            "cpu",
            closure=True,
        )


def test_workload_refuses_a_closure_with_an_fp16_baseline() -> None:
    with pytest.raises(WorkloadError, match="^Workload.baseline: an optimizer stepped with a closure"):
        Workload(model=_linear, dataset=Points, loss=_loss, step_closure=True, baseline={"precision": "fp16"})


def test_training_calls_after_step_with_the_uncompiled_model() -> None:
    seen = []
    workload = Workload(
        model=_linear, dataset=Points, loss=_loss, after_step=lambda model, optimizer: seen.append(model)
    )
    run = training.Training(workload, TrainConfig(batch_size=8, compile="default"), "cpu")
    assert run.forward_model is not run.model
    run.train_step.after_step(run.forward_model, run.optimizer)
    assert seen == [run.model]


def test_training_with_sam_and_swa_steps_and_averages() -> None:
    workload = load_workload(workload_spec(file="sam.py"))
    run = training.Training(
        workload, TrainConfig(batch_size=16, accumulation_steps=2, max_lr=0.05), "cpu", total_steps=6
    )
    losses = [float(run.step()) for _ in range(6)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert workload.after_step.updates == 6


def test_gradient_checkpointing_on_a_model_with_frozen_weights_makes_inputs_require_grad() -> None:
    calls = []

    class Adapted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.base = nn.Linear(4, 4).requires_grad_(False)
            self.adapter = nn.Linear(4, 2)

        def gradient_checkpointing_enable(self) -> None:
            calls.append("checkpointing")

        def enable_input_require_grads(self) -> None:
            calls.append("input grads")

    training.prepare_model(Adapted(), TrainConfig(gradient_checkpointing=True), "cpu")
    assert calls == ["checkpointing", "input grads"]
    calls.clear()
    training.prepare_model(Adapted().requires_grad_(True), TrainConfig(gradient_checkpointing=True), "cpu")
    assert calls == ["checkpointing"]


def test_a_sam_workload_trial_finishes_ok(fast_measure) -> None:
    outcome = run_trial(
        TrialJob(
            workload=workload_spec(file="sam.py"),
            config=TrainConfig(batch_size=16).to_dict(),
            measure=fast_measure,
            timeout_seconds=120,
        )
    )
    assert outcome.status.value == "ok", outcome.reason
    assert outcome.samples_per_second > 0


def test_evaluate_runs_in_eval_mode_without_grad_and_restores_training() -> None:
    model = nn.Sequential(nn.Linear(4, 2), nn.Dropout(0.5))
    seen = {}

    def evaluate_fn(m):
        seen["training"] = m.training
        seen["grad"] = torch.is_grad_enabled()
        return {"accuracy": torch.tensor(0.75)}

    assert training.evaluate(evaluate_fn, model, TrainConfig(), "cpu") == {"accuracy": 0.75}
    assert seen == {"training": False, "grad": False}
    assert model.training
    assert training.evaluate(lambda m: 0.5, model, TrainConfig(), "cpu") == {"metric": 0.5}


def test_workload_refuses_a_bad_evaluation_cadence() -> None:
    with pytest.raises(WorkloadError, match="Workload.evaluate_every must be a number of epochs > 0, got 0"):
        Workload(model=_linear, dataset=Points, loss=_loss, evaluate=lambda m: 0.0, evaluate_every=0)


def test_training_passes_workload_knobs_to_their_factories() -> None:
    received = {}

    def model(width: int = 2):
        received["width"] = width
        return nn.Linear(4, 2)

    def dataset(size: int = 64):
        received["size"] = size
        return Points(size)

    def optimizer(params, lr, momentum=0.0):
        received["momentum"] = momentum
        return torch.optim.SGD(params, lr=lr, momentum=momentum)

    workload = Workload(model=model, dataset=dataset, loss=_loss, optimizer=optimizer)
    config = TrainConfig.from_dict({"batch_size": 8, "model.width": 7, "dataset.size": 32, "optimizer.momentum": 0.5})
    run = training.Training(workload, config, "cpu")
    assert received == {"width": 7, "size": 32, "momentum": 0.5}
    assert run.dataset_size == 32


def test_default_optimizer_takes_workload_knobs() -> None:
    optimizer = training.default_optimizer(_linear().parameters(), 0.1, foreach=False)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["foreach"] is False


def test_a_trial_times_the_workloads_evaluation_once(fast_measure) -> None:
    outcome = run_trial(
        TrialJob(
            workload=workload_spec("evaluated", file="knobs.py"),
            config=TrainConfig(batch_size=8).to_dict(),
            measure=fast_measure,
            timeout_seconds=120,
        )
    )
    assert outcome.status.value == "ok", outcome.reason
    assert outcome.evaluation_seconds is not None and outcome.evaluation_seconds > 0
    assert outcome.user_attrs()["evaluation_seconds"] == outcome.evaluation_seconds


# --- the helpers a training loop of its own calls ---------------------------------------------------------


def test_steps_per_epoch_counts_the_groups_optimizer_steps_yields() -> None:
    config = TrainConfig(batch_size=8, accumulation_steps=3)
    loader = training.dataloader(Points(64), config)  # 8 full micro-batches: 2 groups of 3, 2 left over
    groups = list(training.optimizer_steps(loader, config))
    assert training.steps_per_epoch(64, config) == len(groups) == 2
    assert [len(group) for group in groups] == [3, 3]
    assert training.steps_per_epoch(7, TrainConfig(batch_size=8)) == 0  # not one full batch


@pytest.mark.parametrize(
    ("loss", "message"),
    [
        (1.5, "loss must return a scalar tensor, got float 1.5"),
        (torch.ones(3, requires_grad=True), "loss must return a scalar tensor, got shape (3,)"),
        (torch.tensor(1.0), "loss must return a tensor that requires grad (it was computed without the model's graph)"),
    ],
)
def test_check_loss_refuses_what_backward_cannot_start_from(loss, message) -> None:
    with pytest.raises(WorkloadError) as info:
        training.check_loss(loss)
    assert str(info.value) == message
    training.check_loss(_loss(_linear(), (torch.randn(2, 4), torch.tensor([0, 1]))))  # a model's scalar: fine


def test_pins_memory_only_for_copies_to_a_cuda_device() -> None:
    assert training.pins_memory(TrainConfig(pin_memory=True), "cuda:0") is True
    assert training.pins_memory(TrainConfig(pin_memory=True), "cpu") is False
    assert training.pins_memory(TrainConfig(pin_memory=False), "cuda") is False


def test_enable_gradient_checkpointing_takes_the_hook_else_the_models_own_method() -> None:
    hooked = []
    training.enable_gradient_checkpointing(_linear(), hooked.append)
    assert len(hooked) == 1 and isinstance(hooked[0], nn.Linear)

    class HuggingFaceStyle(nn.Linear):
        enabled = False

        def gradient_checkpointing_enable(self) -> None:
            self.enabled = True

    model = HuggingFaceStyle(4, 2)
    training.enable_gradient_checkpointing(model)
    assert model.enabled is True
    with pytest.raises(WorkloadError, match="gradient_checkpointing needs Workload.gradient_checkpointing"):
        training.enable_gradient_checkpointing(_linear())


def test_unsupported_by_workload_drops_the_knobs_its_model_cannot_use() -> None:
    from autotune.training._apply import unsupported_by_workload

    linear = unsupported_by_workload(Workload(model=_linear, dataset=Points, loss=_loss))
    assert linear["gradient_checkpointing"] == {
        True: "the workload has no gradient_checkpointing hook and its model no gradient_checkpointing_enable()"
    }
    assert linear["channels_last"] == {True: "the model has no 2-D convolutions for channels_last to speed up"}
    convolutional = Workload(
        model=lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()),
        dataset=Points,
        loss=_loss,
        gradient_checkpointing=lambda model: None,
    )
    kept = unsupported_by_workload(convolutional)
    assert "channels_last" not in kept and "gradient_checkpointing" not in kept

    def unbuildable():
        raise RuntimeError("needs real weights")

    assert unsupported_by_workload(Workload(model=unbuildable, dataset=Points, loss=_loss)) == {}


def test_fixed_samples_loss_is_taken_over_the_same_samples_whatever_the_runs_seed() -> None:
    workload = Workload(model=_linear, dataset=Points, loss=_loss)
    run = training.Training(workload, TrainConfig(batch_size=8, precision="bf16"), "cpu", total_steps=2)
    torch.manual_seed(1)
    first = training.fixed_samples_loss(run, 16)
    torch.manual_seed(2)
    assert training.fixed_samples_loss(run, 16) == first  # the same 16 samples, in fp32
    assert run.model.training is True  # back in training mode
    everything = training.fixed_samples_loss(run, 10_000)  # capped at the dataset's 64
    with torch.no_grad():
        x, y = Points().x, Points().y
        assert everything == pytest.approx(float(F.cross_entropy(run.model(x), y)), rel=1e-5)


@pytest.mark.real_precision_probe  # the probe's readings faked, its rule real
def test_slow_precisions_drops_a_precision_slower_than_fp32_with_its_figures(monkeypatch):
    rates = {"fp32": 40e9, "bf16": 1e9, "fp16": 30e9}
    monkeypatch.setattr(_apply, "_matmul_rate", lambda device, precision: rates[precision])
    slow = _apply.slow_precisions("cpu", ["fp32", "bf16", "fp16", "tf32"])
    assert list(slow) == ["bf16"]  # fp16 at 0.75x fp32 is kept: it may still gain memory or bandwidth
    assert "bf16 matmuls run at 1 GFLOP/s" in slow["bf16"] and "0.025x fp32's 40" in slow["bf16"]
    rates["bf16"] = None  # a precision that cannot run at all is left to its trial
    assert _apply.slow_precisions("cpu", ["bf16"]) == {}
    assert _apply.slow_precisions("cpu", ["fp32", "tf32"]) == {}  # nothing to probe


@pytest.mark.real_precision_probe
def test_matmul_probe_measures_this_machine_quickly_and_restores_threads():
    threads = torch.get_num_threads()
    _apply._matmul_rate.cache_clear()
    began = time.perf_counter()
    fp32 = _apply._matmul_rate("cpu", "fp32")
    bf16 = _apply._matmul_rate("cpu", "bf16")
    assert time.perf_counter() - began < 5  # a probe, not a benchmark (each reading well under a second)
    assert fp32 is not None and fp32 > 1e8 and bf16 is not None and bf16 > 0
    assert torch.get_num_threads() == threads
    slow = _apply.slow_precisions("cpu", ["bf16"])
    assert (bf16 < _apply.SLOW_PRECISION * fp32) == ("bf16" in slow)
