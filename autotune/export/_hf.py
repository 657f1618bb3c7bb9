"""The export as Hugging Face ``transformers.TrainingArguments`` keyword arguments (transformers 5.x),
with the Trainer code for what TrainingArguments has no field for: OneCycle and channels_last."""

from __future__ import annotations

from typing import Any

from autotune.export import _forms
from autotune.knobs._table import form_fields


def hf_export(document: dict[str, Any]) -> dict[str, Any]:
    """``{"TrainingArguments": {...}, "code": [...], "autotune": {...}}``: build the arguments with
    ``TrainingArguments(output_dir=..., **exported["TrainingArguments"])``, then run ``code``."""
    config = _forms.export_config(document)
    loader = _forms.dataloader_arguments(document)
    on_cpu = _forms.tuned_on_cpu(document)
    total_steps = _forms.one_cycle_arguments(document)["total_steps"]
    # The knobs' own fields (the knob table's names), with the DataLoader's values where it decides them:
    # pin_memory as measured (TrainingArguments' default is True), prefetch and persistence only with
    # workers (TrainingArguments raises on a prefetch factor without them).
    values = {
        **config.to_dict(),
        "prefetch_factor": None,
        "persistent_workers": False,
        **loader,
        "max_lr": _forms.one_cycle_arguments(document)["max_lr"],
    }
    arguments: dict[str, Any] = form_fields("hf", values)
    arguments["dataloader_drop_last"] = loader["drop_last"]  # full batches only: static shapes, as measured
    arguments["bf16"] = config.precision == "bf16"
    arguments["fp16"] = config.precision == "fp16"
    # Explicit, never left unset: with torch_compile and tf32 unset (or with bf16), TrainingArguments turns
    # TF32 on by itself, while the trials ran TF32 only for precision tf32. tf32=True raises ValueError
    # without an Ampere or newer CUDA GPU, tf32=False never raises (it is a no-op there); TF32 does not
    # exist on the CPU, where the trials ran plain fp32, so a CPU-tuned config always gets False.
    arguments["tf32"] = config.precision == "tf32" and not on_cpu
    arguments["torch_compile"] = config.compile != "off"
    if config.compile != "off":
        arguments["torch_compile_mode"] = config.compile
    # activation_checkpointing (the table's name) is transformers 5.x's; `gradient_checkpointing` is its
    # deprecated alias (a FutureWarning).
    if total_steps is not None:
        arguments["max_steps"] = total_steps  # exactly the OneCycle schedule's length
    else:
        arguments["num_train_epochs"] = _forms.epochs(document)
    if on_cpu:
        arguments["use_cpu"] = True  # else TrainingArguments takes any GPU there is, and refuses bf16 without one
    form: dict[str, Any] = {"TrainingArguments": arguments, "code": _code(document)}
    if _forms.world_size(document) > 1:
        # Trainer runs DDP under torchrun: per_device_train_batch_size is each rank's, as measured.
        form["launch"] = _forms.torchrun_line(document)
    form["autotune"] = _forms.provenance(document)
    return form


def _code(document: dict[str, Any]) -> list[str]:
    config = _forms.export_config(document)
    total_steps = _forms.one_cycle_arguments(document)["total_steps"]
    lines = [
        '# args = TrainingArguments(output_dir="out", **exported["TrainingArguments"]); model and train_dataset are '
        "yours",
        "import math" if total_steps is None else None,
        "import torch",
        "from transformers import Trainer",
    ]
    lines += _forms.workload_knob_lines(config)
    if _forms.tuned_on_cuda(document):
        lines.append(
            "# one GPU, as measured: run with CUDA_VISIBLE_DEVICES=<index> (several GPUs make the batch larger)"
        )
    lines += _forms.model_lines(config, checkpointing=False, compile_model=False)  # the Trainer does the other two
    lines.append(_forms.optimizer_line(document))
    if total_steps is None:  # the export did not know the dataset's size: the Trainer's own count, on one device
        lines.append(
            "total_steps = math.ceil(args.num_train_epochs * math.ceil("
            "len(train_dataset) // args.per_device_train_batch_size / args.gradient_accumulation_steps))"
        )
    lines += _forms.one_cycle_lines(document, "optimizer", "total_steps" if total_steps is None else str(total_steps))
    lines.append(
        "trainer = Trainer(model=model, args=args, train_dataset=train_dataset, optimizers=(optimizer, scheduler))"
    )
    if _forms.tuned_on_cuda(document):
        if config.precision == "fp32" and config.compile != "off":
            lines.append(
                "torch.backends.cuda.matmul.allow_tf32 = False  # after Trainer(): its Accelerator turns TF32 matmuls "
                'on under torch.compile with mixed_precision "no"; off again, as measured'
            )
        # TrainingArguments' tf32 sets torch.backends.fp32_precision, which leaves cuDNN convolutions at their
        # own default, TF32 (seen with torch 2.11 and transformers 5.24 on an H200): set them as the trials ran.
        tf32 = config.precision == "tf32"
        lines.append(
            f"torch.backends.cudnn.allow_tf32 = {tf32}  # TF32 cuDNN convolutions "
            f"{'on: precision tf32' if tf32 else 'off, as measured (tf32=False leaves them on)'}"
        )
        lines.append("torch.backends.cudnn.benchmark = True  # cuDNN autotunes convolution algorithms, as measured")
    lines.append("trainer.train()")
    return [line for line in lines if line is not None]
