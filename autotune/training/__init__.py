"""Where every knob of a TrainConfig acts (the apply module), the full run, its checkpoints and its
record. ``from autotune import training`` gives the apply functions to a training loop of your own.

The apply functions load on first use (``training.Training``, ...): torch is imported then, not when a
command that never trains (``autotune --help``, ``report``) imports autotune."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autotune.training._apply import (
        ONE_CYCLE_DEFAULTS,
        Batches,
        Training,
        TrainStep,
        autocast,
        autocast_dtype,
        backend_flags,
        check_loss,
        compile_model,
        cycles_momentum,
        dataloader,
        dataloader_kwargs,
        default_optimizer,
        enable_gradient_checkpointing,
        evaluate,
        fixed_samples_loss,
        grad_scaler,
        one_cycle,
        optimizer_implementation,
        optimizer_steps,
        pins_memory,
        prepare_model,
        set_tf32,
        steps_per_epoch,
        tf32_enabled,
        to_device,
        trainable_parameters,
    )

__all__ = [
    "Batches",
    "ONE_CYCLE_DEFAULTS",
    "TrainStep",
    "Training",
    "autocast",
    "autocast_dtype",
    "backend_flags",
    "check_loss",
    "compile_model",
    "cycles_momentum",
    "dataloader",
    "dataloader_kwargs",
    "default_optimizer",
    "enable_gradient_checkpointing",
    "evaluate",
    "fixed_samples_loss",
    "grad_scaler",
    "one_cycle",
    "optimizer_implementation",
    "optimizer_steps",
    "pins_memory",
    "prepare_model",
    "set_tf32",
    "steps_per_epoch",
    "tf32_enabled",
    "to_device",
    "trainable_parameters",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("autotune.training._apply"), name)
    raise AttributeError(f"module 'autotune.training' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
