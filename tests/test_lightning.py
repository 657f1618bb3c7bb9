"""autotune.export._lightning: an export as Lightning Trainer and DataLoader keyword arguments with the
code for what Trainer has no field for, checked against a real Trainer fitted with them."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from export_documents import CONFIGS, CUDA, Classifier, image_loss, images, make_document, run_code

from autotune.export import lightning_export
from autotune.knobs._config import TrainConfig


def lightning_trainer(tmp_path, form: dict[str, Any], **overrides: Any):
    lightning = pytest.importorskip("lightning", reason="the lightning extra is not installed")
    arguments = {**form["Trainer"], **overrides}
    return lightning.Trainer(
        **arguments,
        logger=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def lightning_module():
    """A fresh LightningModule class around Classifier; configure_optimizers comes from the export's code."""
    lightning = pytest.importorskip("lightning", reason="the lightning extra is not installed")

    class Module(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = Classifier()

        def gradient_checkpointing_enable(self) -> None:
            self.net.gradient_checkpointing_enable()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, _index: int) -> torch.Tensor:
            return image_loss(self, batch)

    return Module()


@pytest.mark.parametrize("name", CONFIGS)
def test_lightning_export_builds_a_trainer_carrying_every_knob(tmp_path, name):
    config = TrainConfig.from_dict({"batch_size": 8, "max_lr": 0.02, **CONFIGS[name]})
    form = lightning_export(make_document(CONFIGS[name]))
    trainer = lightning_trainer(tmp_path, form)
    assert trainer.accumulate_grad_batches == config.accumulation_steps
    assert trainer.precision == {"fp32": "32-true", "bf16": "bf16-mixed"}[config.precision]
    assert trainer.max_epochs == 2 and trainer.num_devices == 1
    assert type(trainer.accelerator).__name__ == "CPUAccelerator"
    loader = torch.utils.data.DataLoader(images(), **form["DataLoader"])
    assert (loader.batch_size, loader.num_workers, loader.drop_last) == (config.batch_size, config.num_workers, True)
    assert loader.prefetch_factor == (config.prefetch_factor or 2 if config.num_workers else None)
    assert loader.persistent_workers == config.persistent_workers
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler)


@pytest.mark.parametrize(
    ("precision", "expected"), [("fp32", "32-true"), ("tf32", "32-true"), ("bf16", "bf16-mixed"), ("fp16", "16-mixed")]
)
def test_lightning_export_cuda_tuned_precision_and_tf32_lines(precision, expected):
    form = lightning_export(make_document({"precision": precision}, device=CUDA))
    assert form["Trainer"]["precision"] == expected
    assert form["Trainer"]["accelerator"] == "cuda" and form["Trainer"]["benchmark"] is True
    matmul = "high" if precision == "tf32" else "highest"
    assert f'torch.set_float32_matmul_precision("{matmul}")' in "\n".join(form["code"])
    assert f"torch.backends.cudnn.allow_tf32 = {precision == 'tf32'}" in "\n".join(form["code"])


def test_lightning_export_code_ends_with_configure_optimizers_when_no_knob_acts_on_the_model():
    code = lightning_export(make_document())["code"]
    assert code[-1].startswith('    return {"optimizer": optimizer, "lr_scheduler"')


def test_lightning_export_fractional_epochs_stop_at_total_steps():
    assert lightning_export(make_document(epochs=1.5, total_steps=6))["Trainer"]["max_steps"] == 6
    assert lightning_export(make_document(epochs=1.5, total_steps=None))["Trainer"]["max_epochs"] == 2


def test_lightning_export_code_fits_with_one_cycle_stepped_every_optimizer_step(tmp_path):
    form = lightning_export(
        make_document(
            {"accumulation_steps": 2, "channels_last": True, "gradient_checkpointing": True, "precision": "bf16"}
        )
    )
    model = lightning_module()
    namespace = run_code(form, model=model)
    assert namespace["model"] is model  # no compile: the module itself
    assert model.net.checkpointing
    assert model.net.conv.weight.is_contiguous(memory_format=torch.channels_last)
    type(model).configure_optimizers = namespace["configure_optimizers"]
    trainer = lightning_trainer(tmp_path, form)
    trainer.fit(model, torch.utils.data.DataLoader(images(64), **form["DataLoader"]))
    scheduler = trainer.lr_scheduler_configs[0]
    assert scheduler.interval == "step"
    # 64 samples in batches of 8, 2 accumulated, 2 epochs: 8 optimizer steps, the schedule's whole length.
    assert trainer.estimated_stepping_batches == scheduler.scheduler.total_steps == 8
    assert scheduler.scheduler.last_epoch == 8 and trainer.global_step == 8
    assert scheduler.scheduler.cycle_momentum is True  # decided from AdamW's betas, the export left it open


def test_lightning_export_code_compiles_the_module_with_the_mode():
    form = lightning_export(make_document({"compile": "max-autotune"}, cycle_momentum=False))
    assert 'model = torch.compile(model, mode="max-autotune")' in form["code"]
    assert "cycle_momentum=False," in "\n".join(form["code"])
    model = lightning_module()
    compiled = run_code(form, model=model)["model"]  # torch.compile is lazy: nothing compiles until a call
    assert compiled is not model and compiled._orig_mod is model


def test_lightning_export_cpu_tuned_has_no_cuda_lines_and_no_benchmark():
    form = lightning_export(make_document({"precision": "bf16"}))
    assert form["Trainer"]["accelerator"] == "cpu" and "benchmark" not in form["Trainer"]
    code = "\n".join(form["code"])
    assert "set_float32_matmul_precision" not in code and "allow_tf32" not in code


def test_lightning_export_device_unknown_lets_lightning_choose():
    document = make_document()
    del document["provenance"]["device"]
    trainer = lightning_export(document)["Trainer"]
    assert trainer["accelerator"] == "auto" and trainer["devices"] == 1 and "benchmark" not in trainer


def test_lightning_export_whole_epochs_are_max_epochs_even_with_total_steps():
    trainer = lightning_export(make_document(epochs=3, total_steps=30))["Trainer"]
    assert trainer["max_epochs"] == 3 and "max_steps" not in trainer


def test_lightning_export_code_applies_every_model_knob_after_configure_optimizers():
    code = lightning_export(make_document({"gradient_checkpointing": True, "channels_last": True}))["code"]
    marker = code.index("# on your LightningModule `model`, before trainer.fit(model, loader):")
    assert code.index("def configure_optimizers(self):") < marker
    assert [line.split("  #")[0] for line in code[marker + 1 :]] == [
        "model.gradient_checkpointing_enable()",
        "model = model.to(memory_format=torch.channels_last)",
    ]
