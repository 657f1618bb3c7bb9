"""What every framework form of an export shares: its config, where it was tuned, the DataLoader
arguments, and the code lines for what no framework has a field for."""

from __future__ import annotations

import json
import math
from typing import Any

from autotune.knobs._config import TrainConfig
from autotune.knobs._table import optimizer_kwargs

# TrainConfig.precision -> the mixed precision each framework names it by; fp32 and tf32 train in fp32.
MIXED_PRECISION: dict[str, str | None] = {"fp32": None, "tf32": None, "bf16": "bf16", "fp16": "fp16"}


def export_config(document: dict[str, Any]) -> TrainConfig:
    return TrainConfig.from_dict(document["config"], source="export config")


def world_size(document: dict[str, Any]) -> int:
    """The data-parallel processes the config was measured with (its world_size; 1: a single process)."""
    return export_config(document).world_size


def torchrun_line(document: dict[str, Any]) -> str:
    """The command that launches a training script as the config's data-parallel ranks on one machine."""
    return f"torchrun --standalone --nproc-per-node {world_size(document)} train.py"


def tuned_device(document: dict[str, Any]) -> str | None:
    """The torch device the config was tuned on ("cpu", "cuda:0"), from provenance.device
    ("cuda:0 (NVIDIA H100 80GB HBM3)"); None when the export does not say."""
    device = (document.get("provenance") or {}).get("device")
    return str(device).split()[0] if device else None


def tuned_on_cpu(document: dict[str, Any]) -> bool:
    return (tuned_device(document) or "").startswith("cpu")


def tuned_on_cuda(document: dict[str, Any]) -> bool:
    return (tuned_device(document) or "").startswith("cuda")


def dataloader_arguments(document: dict[str, Any]) -> dict[str, Any]:
    """``DataLoader(train_dataset, **these)``: the loader the trials measured (autotune.training._apply.dataloader):
    shuffled, full batches only, prefetch and persistent workers only with workers, pinned memory on CUDA."""
    from autotune.training._apply import dataloader_kwargs

    device = "cpu" if tuned_on_cpu(document) else "cuda"
    return {"shuffle": True, **dataloader_kwargs(export_config(document), device)}


def one_cycle_arguments(document: dict[str, Any]) -> dict[str, Any]:
    """The export's ``one_cycle:`` section, with torch's defaults for anything it lacks."""
    from autotune.training._apply import ONE_CYCLE_DEFAULTS

    section = dict(document.get("one_cycle") or {})
    return {
        "max_lr": section.get("max_lr", export_config(document).max_lr),
        "total_steps": section.get("total_steps"),
        **{key: section.get(key, value) for key, value in ONE_CYCLE_DEFAULTS.items()},
        "cycle_momentum": section.get("cycle_momentum"),
    }


def epochs(document: dict[str, Any]) -> float:
    value = (document.get("full_run") or {}).get("epochs") or 1
    return int(value) if float(value).is_integer() else float(value)


def whole_epochs(document: dict[str, Any]) -> int:
    return max(1, math.ceil(epochs(document)))


def provenance(document: dict[str, Any]) -> dict[str, Any]:
    """The short ``autotune:`` section: where these arguments come from and what they measured."""
    source, measured = document.get("provenance") or {}, document.get("measured") or {}
    return {
        "study": source.get("study"),
        "trial": source.get("trial"),
        "device": source.get("device"),
        "samples_per_second": measured.get("samples_per_second"),
        "effective_batch_size": export_config(document).effective_batch_size,
    }


def literal(value: Any) -> str:
    """A Python literal for a YAML/JSON value: strings in double quotes, True/False/None."""
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def one_cycle_lines(document: dict[str, Any], optimizer: str, total_steps: str, indent: str = "") -> list[str]:
    """``scheduler = OneCycleLR(...)`` with the export's arguments; ``cycle_momentum`` left open by the
    export (null) is decided from the optimizer as autotune does: only one with betas or momentum cycles it."""
    args = one_cycle_arguments(document)
    momentum = args["cycle_momentum"]
    momentum_code = (
        literal(momentum)
        if momentum is not None
        else f'"betas" in {optimizer}.defaults or ({optimizer}.defaults.get("momentum") or 0) > 0'
    )
    return [
        f"{indent}scheduler = torch.optim.lr_scheduler.OneCycleLR(",
        f"{indent}    {optimizer}, max_lr={literal(args['max_lr'])}, total_steps={total_steps}, "
        f"pct_start={literal(args['pct_start'])}, div_factor={literal(args['div_factor'])},",
        f"{indent}    final_div_factor={literal(args['final_div_factor'])}, "
        f"anneal_strategy={literal(args['anneal_strategy'])}, cycle_momentum={momentum_code},",
        f"{indent})",
    ]


def optimizer_line(document: dict[str, Any], parameters: str = "model.parameters()", indent: str = "") -> str:
    max_lr = one_cycle_arguments(document)["max_lr"]
    extra = "".join(
        f", {key}={literal(value)}" for key, value in optimizer_kwargs(export_config(document).to_dict()).items()
    )
    return f"{indent}optimizer = torch.optim.AdamW({parameters}, lr={literal(max_lr)}{extra})  # or your optimizer"


def model_lines(config: TrainConfig, *, checkpointing: bool = True, compile_model: bool = True) -> list[str]:
    """Gradient checkpointing, channels_last and torch.compile on ``model``, in autotune.training._apply's order."""
    lines = []
    if checkpointing and config.gradient_checkpointing:
        lines.append(
            "model.gradient_checkpointing_enable()  # gradient checkpointing: your model's hook, as in the trials"
        )
    if config.channels_last:
        lines.append(
            "model = model.to(memory_format=torch.channels_last)  "
            "# channels_last (4-D inputs too: x.contiguous(memory_format=torch.channels_last))"
        )
    if compile_model and config.compile != "off":
        lines.append(f"model = torch.compile(model, mode={literal(config.compile)})")
    return lines


def workload_knob_lines(config: TrainConfig) -> list[str]:
    """A comment naming the workload's own tuned knobs (``dataset.max_length``...): your factories take them."""
    if not config.workload_knobs:
        return []
    values = ", ".join(f"{name}={literal(value)}" for name, value in config.workload_knobs.items())
    return [f"# your workload's own knobs, as tuned (pass them to your model, dataset and optimizer): {values}"]


def cuda_backend_lines(config: TrainConfig) -> list[str]:
    """The CUDA backend flags the trials ran with (autotune.training._apply.backend_flags): TF32 for matmuls
    and cuDNN convolutions on for precision tf32 and off otherwise, and cudnn.benchmark on."""
    tf32 = config.precision == "tf32"
    state = "on: precision tf32" if tf32 else "off, as measured"
    return [
        f"torch.backends.cuda.matmul.allow_tf32 = {tf32}  # TF32 matmuls {state}",
        f"torch.backends.cudnn.allow_tf32 = {tf32}  # TF32 cuDNN convolutions {state} (PyTorch's default is on)",
        "torch.backends.cudnn.benchmark = True  # cuDNN autotunes convolution algorithms in the first steps",
    ]
