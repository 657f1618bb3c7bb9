"""autotune.export._accelerate: an export as Accelerate Accelerator, TorchDynamoPlugin and DataLoader
keyword arguments with its training loop, checked against a real Accelerator and the loop run."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from export_documents import CONFIGS, CUDA, Classifier, image_loss, images, make_document, run_code

from autotune.export import accelerate_export
from autotune.knobs._config import TrainConfig


@pytest.fixture
def fresh_accelerate_state():
    """Accelerate keeps one AcceleratorState per process, refusing a second mixed precision."""
    pytest.importorskip("accelerate", reason="the accelerate extra is not installed")
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def accelerator(form: dict[str, Any]):
    from accelerate import Accelerator
    from accelerate.utils import TorchDynamoPlugin

    plugin = {"dynamo_plugin": TorchDynamoPlugin(**form["TorchDynamoPlugin"])} if "TorchDynamoPlugin" in form else {}
    return Accelerator(**form["Accelerator"], **plugin)


@pytest.mark.parametrize("name", CONFIGS)
def test_accelerate_export_builds_an_accelerator_carrying_every_knob(fresh_accelerate_state, name):
    config = TrainConfig.from_dict({"batch_size": 8, "max_lr": 0.02, **CONFIGS[name]})
    form = accelerate_export(make_document(CONFIGS[name]))
    built = accelerator(form)
    assert built.mixed_precision == {"fp32": "no", "bf16": "bf16"}[config.precision]
    assert built.gradient_accumulation_steps == config.accumulation_steps
    assert built.device.type == "cpu"
    plugin = built.state.dynamo_plugin
    if config.compile == "off":
        assert "TorchDynamoPlugin" not in form and plugin.backend.value == "NO"
    else:
        assert (plugin.backend.value, plugin.mode) == ("INDUCTOR", config.compile)
    assert form["DataLoader"]["batch_size"] == config.batch_size
    assert form["DataLoader"]["num_workers"] == config.num_workers


@pytest.mark.parametrize(("precision", "mixed"), [("fp32", "no"), ("tf32", "no"), ("bf16", "bf16"), ("fp16", "fp16")])
def test_accelerate_export_cuda_tuned_mixed_precision_and_tf32_lines(precision, mixed):
    form = accelerate_export(make_document({"precision": precision, "compile": "default"}, device=CUDA))
    assert form["Accelerator"] == {"mixed_precision": mixed, "gradient_accumulation_steps": 1}
    code = "\n".join(form["code"])
    tf32 = precision == "tf32"
    assert f"torch.backends.cuda.matmul.allow_tf32 = {tf32}" in code
    assert f"torch.backends.cudnn.allow_tf32 = {tf32}" in code
    # Accelerate turns TF32 matmuls on under dynamo with mixed_precision "no": the fp32 line says so, after it.
    assert ("after Accelerator(): Accelerate turns TF32" in code) == (precision == "fp32")
    assert code.index("accelerator = Accelerator(") < code.index("allow_tf32")


def test_accelerate_export_code_trains_with_one_cycle_over_the_optimizer_steps(fresh_accelerate_state):
    form = accelerate_export(
        make_document(
            {"accumulation_steps": 2, "precision": "bf16", "channels_last": True, "gradient_checkpointing": True}
        )
    )
    model = Classifier()
    namespace = run_code(form, exported=form, model=model, train_dataset=images(64), compute_loss=image_loss)
    scheduler = namespace["scheduler"].scheduler
    # 64 samples in batches of 8, 2 accumulated, 2 epochs: 8 optimizer steps, the schedule's whole length.
    assert scheduler.total_steps == 8 and scheduler.last_epoch == 8
    assert namespace["accelerator"].mixed_precision == "bf16"
    assert model.checkpointing and model.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_accelerate_export_cpu_only_where_tuned_on_the_cpu_and_plugin_only_with_compile():
    cpu = accelerate_export(make_document())
    assert cpu["Accelerator"] == {"mixed_precision": "no", "gradient_accumulation_steps": 1, "cpu": True}
    assert "TorchDynamoPlugin" not in cpu
    assert not any("TorchDynamoPlugin" in line for line in cpu["code"])
    compiled = accelerate_export(make_document({"compile": "max-autotune"}, device=CUDA))
    assert "cpu" not in compiled["Accelerator"]
    assert compiled["TorchDynamoPlugin"] == {"backend": "inductor", "mode": "max-autotune"}
    assert "from accelerate.utils import TorchDynamoPlugin" in compiled["code"]
    plugin = 'dynamo_plugin=TorchDynamoPlugin(**exported["TorchDynamoPlugin"])'
    assert f'accelerator = Accelerator(**exported["Accelerator"], {plugin})' in compiled["code"]


def test_accelerate_export_code_leaves_compile_to_the_accelerator():
    code = accelerate_export(make_document({"compile": "default", "channels_last": True}))["code"]
    assert not any(line.startswith("model = torch.compile(") for line in code)
    assert "model = model.to(memory_format=torch.channels_last)" in "\n".join(code)


def test_accelerate_export_code_without_total_steps_counts_them_from_the_loader(fresh_accelerate_state):
    # 64 samples in batches of 8, 2 accumulated, 1.5 epochs run as 2 whole ones: 8 optimizer steps.
    form = accelerate_export(make_document({"accumulation_steps": 2}, total_steps=None, epochs=1.5))
    assert any("total_steps=len(loader) // 2 * 2," in line for line in form["code"])
    assert "for epoch in range(2):" in form["code"]
    namespace = run_code(form, exported=form, model=Classifier(), train_dataset=images(64), compute_loss=image_loss)
    scheduler = namespace["scheduler"].scheduler
    assert scheduler.total_steps == 8 and scheduler.last_epoch == 8
