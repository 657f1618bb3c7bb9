"""From a study to the user's run: the selection of the best trial, its verification side by side, the
export document, and the forms training frameworks take (Hugging Face TrainingArguments, Lightning
Trainer, Accelerate Accelerator keyword arguments, a plain PyTorch script)."""

from autotune.export._accelerate import accelerate_export
from autotune.export._export import Export, export_best
from autotune.export._hf import hf_export
from autotune.export._lightning import lightning_export
from autotune.export._torch_script import torch_script
from autotune.study._selection import Candidate, Selection, select
from autotune.study._verify import Verification, verify

__all__ = [
    "Candidate",
    "Export",
    "Selection",
    "Verification",
    "accelerate_export",
    "export_best",
    "hf_export",
    "lightning_export",
    "select",
    "torch_script",
    "verify",
]
