"""Export documents as export_best writes them, and a small image model, for the tests of the framework
forms (test_hf.py, test_lightning.py, test_accelerate.py, test_torch_script.py, test_forms.py, test_export.py)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from conftest import workload_spec
from torch import nn

from autotune.knobs._config import TrainConfig

# Knob sets the forms must carry; each is exported as tuned on the CPU unless a test says otherwise.
CONFIGS = {
    "fp32": {},
    "bf16-workers": {"precision": "bf16", "num_workers": 2, "prefetch_factor": 4, "persistent_workers": True},
    "compile-accumulation": {
        "compile": "max-autotune",
        "accumulation_steps": 4,
        "channels_last": True,
        "gradient_checkpointing": True,
        "batch_size": 16,
    },
    "bf16-compile-workers": {"precision": "bf16", "compile": "default", "accumulation_steps": 2, "num_workers": 1},
}
CUDA = "cuda:0 (NVIDIA H100 80GB HBM3)"


def make_document(
    knobs: dict[str, Any] | None = None,
    *,
    device: str = "cpu",
    total_steps: int | None = 8,
    epochs: float = 2,
    cycle_momentum: bool | None = None,
) -> dict[str, Any]:
    """An export document as export_best writes it (the sections these forms read)."""
    config = TrainConfig.from_dict({"batch_size": 8, "max_lr": 0.02, **(knobs or {})})
    return {
        "config": config.to_dict(),
        "measured": {"samples_per_second": 1234.5},
        "one_cycle": {
            "max_lr": config.max_lr,
            "total_steps": total_steps,
            "pct_start": 0.3,
            "div_factor": 25.0,
            "final_div_factor": 1e4,
            "anneal_strategy": "cos",
            "cycle_momentum": cycle_momentum,
        },
        "full_run": {"epochs": epochs, "dataset_size": 64},
        "provenance": {"study": "tiny", "trial": 3, "device": device, "workload": workload_spec()},
    }


def run_code(form: dict[str, Any], **names: Any) -> dict[str, Any]:
    """Execute a form's code lines with ``names`` (model, train_dataset...) in scope; its namespace."""
    namespace = dict(names)
    exec(compile("\n".join(form["code"]), "<code>", "exec"), namespace)  # noqa: S102 - the export's own code
    return namespace


class Classifier(nn.Module):
    """A 3x3 convolution and a linear head on 3x4x4 images; records gradient_checkpointing_enable()."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4 * 4 * 4, 2)
        self.checkpointing = False

    def gradient_checkpointing_enable(self, **_: Any) -> None:
        self.checkpointing = True

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        logits = self.head(F.relu(self.conv(x)).flatten(1))
        return logits if labels is None else {"loss": F.cross_entropy(logits, labels), "logits": logits}


def images(size: int = 64) -> torch.utils.data.TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(size, 3, 4, 4, generator=generator)
    return torch.utils.data.TensorDataset(x, (x.mean(dim=(1, 2, 3)) > 0).long())


def image_loss(model: Any, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)
