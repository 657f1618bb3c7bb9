"""The knob table: each knob declared once, and what reads it (TrainConfig, the space, the device filter,
the records, the trial line, the framework forms, the apply module)."""

from __future__ import annotations

import dataclasses

import optuna
import pytest
import torch
from torch import nn

from autotune import Workload, training
from autotune.exceptions import ConfigError, WorkloadError
from autotune.export import _forms
from autotune.knobs import _table
from autotune.knobs._config import FIELD_NAMES, KNOB_NAMES, TrainConfig
from autotune.knobs._device import detect_device, unsupported_values
from autotune.knobs._space import load_space
from autotune.report._console import describe_config
from autotune.store._records import MEMORY_NEUTRAL_KNOBS
from autotune.training._apply import unsupported_by_workload


def test_trainconfig_fields_are_the_table_and_the_workload_knobs():
    assert KNOB_NAMES == tuple(_table.KNOBS)
    assert FIELD_NAMES == (*_table.KNOBS, "workload_knobs")
    assert TrainConfig().to_dict() == {
        **{name: entry.default for name, entry in _table.KNOBS.items()},
        "workload_knobs": {},
    }


def test_every_knob_has_help_a_domain_and_a_name_in_each_form():
    for name, entry in _table.KNOBS.items():
        assert entry.help, name
        assert entry.is_int or entry.is_float or entry.choices, name
        assert set(entry.forms) == set(_table.FORMS), name


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"num_workers": 1.5}, "num_workers must be an integer, got 1.5"),
        ({"max_lr": 0}, "max_lr must be a finite number > 0, got 0"),
        ({"pin_memory": "yes"}, "pin_memory must be true or false, got 'yes'"),
        ({"precision": "fp8"}, "precision must be one of fp32, tf32, bf16, fp16; got 'fp8'"),
        ({"optimizer_impl": "apex"}, "optimizer_impl must be one of default, foreach, fused; got 'apex'"),
    ],
)
def test_trainconfig_checks_each_value_against_the_table(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)


def test_prefetch_factor_may_be_null_as_the_table_says():
    assert TrainConfig(prefetch_factor=None).prefetch_factor is None
    assert _table.KNOBS["prefetch_factor"].nullable


def test_worker_knobs_and_memory_neutral_knobs_come_from_the_table():
    assert _table.WORKER_KNOBS == ("prefetch_factor", "persistent_workers")
    assert set(MEMORY_NEUTRAL_KNOBS) == {"batch_size", "accumulation_steps", "max_lr"}
    assert "optimizer_impl" not in MEMORY_NEUTRAL_KNOBS  # foreach and fused change the step's temporaries


def test_the_device_filter_reads_each_knobs_requirements():
    cpu = unsupported_values(detect_device("cpu"))
    assert set(cpu["precision"]) == {"tf32", "fp16"}
    assert set(cpu["pin_memory"]) == {True}
    assert set(cpu["compile"]) == {"reduce-overhead"}
    assert "optimizer_impl" not in cpu
    no_bf16 = _table.unsupported_on("cuda", bf16=False, name="Tesla T4")
    assert no_bf16 == {"precision": {"bf16": "Tesla T4 has no bfloat16 support"}}


def test_the_trial_line_shows_each_knob_by_its_table_entry():
    line = describe_config(
        TrainConfig(
            batch_size=16,
            accumulation_steps=2,
            num_workers=2,
            prefetch_factor=4,
            persistent_workers=True,
            precision="bf16",
            optimizer_impl="fused",
        )
    )
    assert line == "bs 16x2 · workers 2 (prefetch 4, persistent) · bf16 · optimizer fused · max_lr 0.001"
    assert describe_config(TrainConfig()) == "bs 32 · workers 0 · fp32 · max_lr 0.001"


def test_optimizer_kwargs_follow_the_optimizer_impl_knob():
    assert _table.optimizer_kwargs({"optimizer_impl": "default"}) == {}
    assert _table.optimizer_kwargs({"optimizer_impl": "fused"}) == {"fused": True}
    assert _table.optimizer_kwargs({"optimizer_impl": "foreach"}) == {"foreach": True}


@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_training_builds_the_optimizer_with_the_implementation(impl):
    workload = Workload(
        model=lambda: nn.Linear(4, 2),
        dataset=lambda: torch.utils.data.TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,))),
        loss=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
    )
    run = training.Training(workload, TrainConfig(batch_size=8, optimizer_impl=impl), "cpu", total_steps=4)
    other = {"foreach": "fused", "fused": "foreach"}[impl]
    assert all(group[impl] is True and not group[other] for group in run.optimizer.param_groups)
    before = [p.detach().clone() for p in run.model.parameters()]
    run.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, run.model.parameters(), strict=True))
    assert run.scheduler is not None and run.scheduler.optimizer is run.optimizer


def test_optimizer_implementation_keeps_groups_and_settings():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(
        [{"params": model[0].parameters(), "lr": 0.1}, {"params": model[1].parameters()}], lr=0.01, weight_decay=0.3
    )
    rebuilt = training.optimizer_implementation(optimizer, TrainConfig(optimizer_impl="fused"))
    assert type(rebuilt) is torch.optim.AdamW
    assert [g["lr"] for g in rebuilt.param_groups] == [0.1, 0.01]
    assert all(g["weight_decay"] == 0.3 and g["fused"] for g in rebuilt.param_groups)
    assert training.optimizer_implementation(optimizer, TrainConfig()) is optimizer


def test_an_optimizer_without_the_argument_is_refused_in_one_line():
    optimizer = torch.optim.RMSprop(nn.Linear(2, 2).parameters())
    with pytest.raises(WorkloadError, match="RMSprop takes no fused= argument"):
        training.optimizer_implementation(optimizer, TrainConfig(optimizer_impl="fused"))


def _workload(optimizer=None) -> Workload:
    return Workload(
        model=lambda: nn.Linear(4, 2), dataset=lambda: [], loss=lambda m, b: m(b).sum(), optimizer=optimizer
    )


def test_the_search_drops_values_the_workloads_optimizer_does_not_take():
    rmsprop = unsupported_by_workload(_workload(lambda params, lr: torch.optim.RMSprop(params, lr=lr)))
    assert rmsprop["optimizer_impl"] == {"fused": "the workload's optimizer: RMSprop takes no fused= argument"}
    assert "optimizer_impl" not in unsupported_by_workload(_workload())  # AdamW takes both, on the CPU


def test_a_space_can_search_the_optimizer_impl_and_the_demo_space_does():
    space = load_space("demo")
    assert space.knobs["optimizer_impl"].choices == ("default", "foreach", "fused")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = {space.suggest(study.ask(), TrainConfig()).optimizer_impl for _ in range(30)}
    assert seen == {"default", "foreach", "fused"}


def test_the_framework_forms_pass_the_implementation_to_the_optimizer():
    document = {"config": dataclasses.asdict(TrainConfig(optimizer_impl="fused")), "one_cycle": {"max_lr": 0.002}}
    assert _forms.optimizer_line(document) == (
        "optimizer = torch.optim.AdamW(model.parameters(), lr=0.002, fused=True)  # or your optimizer"
    )


def test_the_forms_take_each_knobs_plain_field_name_from_the_table():
    values = TrainConfig(batch_size=16, accumulation_steps=4, num_workers=2).to_dict()
    hf = _table.form_fields("hf", values)
    assert hf["per_device_train_batch_size"] == 16 and hf["gradient_accumulation_steps"] == 4
    assert hf["dataloader_num_workers"] == 2 and "dataloader_prefetch_factor" not in hf  # None: left out
    assert "code" not in hf and "bf16 / fp16 / tf32" not in hf  # the form's own lines and mapping
    assert _table.form_fields("lightning", values) == {"accumulate_grad_batches": 4}
    assert _table.form_fields("accelerate", values) == {"gradient_accumulation_steps": 4}
