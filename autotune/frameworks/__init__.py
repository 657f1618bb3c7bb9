"""An export in the forms training frameworks take: Hugging Face TrainingArguments, Lightning Trainer,
Accelerate Accelerator keyword arguments (each with the code for what they have no field for), and a
plain PyTorch script."""

from autotune.frameworks._accelerate import accelerate_export
from autotune.frameworks._hf import hf_export
from autotune.frameworks._lightning import lightning_export
from autotune.frameworks._torch import torch_script

__all__ = ["accelerate_export", "hf_export", "lightning_export", "torch_script"]
