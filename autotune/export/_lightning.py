"""The export as Lightning ``Trainer`` and ``DataLoader`` keyword arguments, with the code for what
Trainer has no field for: TF32, OneCycle in configure_optimizers, checkpointing, channels_last, compile."""

from __future__ import annotations

from typing import Any

from autotune.export import _forms
from autotune.knobs._table import form_fields

# TrainConfig.precision -> Trainer(precision=...); tf32 trains in fp32 with TF32 matmuls (see the code).
PRECISION = {"fp32": "32-true", "tf32": "32-true", "bf16": "bf16-mixed", "fp16": "16-mixed"}


def lightning_export(document: dict[str, Any]) -> dict[str, Any]:
    """``{"Trainer": {...}, "DataLoader": {...}, "code": [...], "autotune": {...}}``: build
    ``lightning.Trainer(**exported["Trainer"])`` and ``DataLoader(train_dataset, **exported["DataLoader"])``."""
    config = _forms.export_config(document)
    on_cuda = _forms.tuned_on_cuda(document)
    trainer: dict[str, Any] = {
        "accelerator": "cpu" if _forms.tuned_on_cpu(document) else "cuda" if on_cuda else "auto",
        # The devices measured: one process per device (DDP), each taking batch_size samples a micro-step.
        "devices": config.world_size,
        "precision": PRECISION[config.precision],
        **form_fields("lightning", config.to_dict()),  # accumulate_grad_batches
    }
    if config.world_size > 1:
        trainer["strategy"] = "ddp"  # DistributedDataParallel, as measured
    trainer.update(_run_length(document))
    if on_cuda:
        trainer["benchmark"] = True  # cudnn.benchmark, as measured
    return {
        "Trainer": trainer,
        "DataLoader": _forms.dataloader_arguments(document),
        "code": _code(document),
        "autotune": _forms.provenance(document),
    }


def _run_length(document: dict[str, Any]) -> dict[str, int]:
    """max_epochs for whole epochs; a fractional run stops at the exported OneCycle's total_steps.
    Lightning's default of 1000 epochs would stretch the schedule (total_steps follows the run's length)."""
    epochs = _forms.epochs(document)
    total_steps = _forms.one_cycle_arguments(document)["total_steps"]
    if isinstance(epochs, float) and total_steps is not None:
        return {"max_steps": total_steps}
    return {"max_epochs": _forms.whole_epochs(document)}


def _code(document: dict[str, Any]) -> list[str]:
    config = _forms.export_config(document)
    lines = [
        '# trainer = lightning.Trainer(**exported["Trainer"]); loader = DataLoader(train_dataset, '
        '**exported["DataLoader"])',
        "import torch",
    ]
    lines += _forms.workload_knob_lines(config)
    if _forms.tuned_on_cuda(document):
        tf32 = config.precision == "tf32"
        lines += [
            f'torch.set_float32_matmul_precision("{"high" if tf32 else "highest"}")  '
            f"# TF32 matmuls {'on: precision tf32' if tf32 else 'off, as measured'}",
            f"torch.backends.cudnn.allow_tf32 = {tf32}  # TF32 cuDNN convolutions likewise (PyTorch's default is on)",
        ]
    lines += [
        "# a method of your LightningModule: OneCycle over the whole run, stepped every optimizer step",
        "def configure_optimizers(self):",
        _forms.optimizer_line(document, "self.parameters()", indent="    "),
        *_forms.one_cycle_lines(document, "optimizer", "self.trainer.estimated_stepping_batches", indent="    "),
        '    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}',
    ]
    model_lines = _forms.model_lines(config)
    if model_lines:
        lines += ["# on your LightningModule `model`, before trainer.fit(model, loader):", *model_lines]
    return lines
