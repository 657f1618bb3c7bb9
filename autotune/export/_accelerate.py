"""The export as Hugging Face Accelerate ``Accelerator``, ``TorchDynamoPlugin`` and ``DataLoader``
keyword arguments, with the training loop that uses them."""

from __future__ import annotations

from typing import Any

from autotune.export import _forms
from autotune.knobs._table import form_fields


def accelerate_export(document: dict[str, Any]) -> dict[str, Any]:
    """``{"Accelerator": {...}, "TorchDynamoPlugin": {...}, "DataLoader": {...}, "code": [...],
    "autotune": {...}}``; ``TorchDynamoPlugin`` only with torch.compile on."""
    config = _forms.export_config(document)
    accelerator: dict[str, Any] = {
        "mixed_precision": _forms.MIXED_PRECISION[config.precision] or "no",
        **form_fields("accelerate", config.to_dict()),  # gradient_accumulation_steps
    }
    if _forms.tuned_on_cpu(document):
        accelerator["cpu"] = True
    form: dict[str, Any] = {"Accelerator": accelerator}
    if config.compile != "off":
        form["TorchDynamoPlugin"] = {"backend": "inductor", "mode": config.compile}  # torch.compile's default backend
    form["DataLoader"] = _forms.dataloader_arguments(document)
    ranks = _forms.world_size(document)
    if ranks > 1:  # measured as data-parallel ranks: `accelerate launch` starts them
        form["launch"] = {
            "num_processes": ranks,
            "multi_gpu": _forms.tuned_on_cuda(document),
            "command": f"accelerate launch --num_processes {ranks}"
            + (" --multi_gpu" if _forms.tuned_on_cuda(document) else "")
            + " train.py",
        }
    form["code"] = _code(document)
    form["autotune"] = _forms.provenance(document)
    return form


def _code(document: dict[str, Any]) -> list[str]:
    config = _forms.export_config(document)
    total_steps = _forms.one_cycle_arguments(document)["total_steps"]
    epochs = _forms.whole_epochs(document)
    plugin = ', dynamo_plugin=TorchDynamoPlugin(**exported["TorchDynamoPlugin"])' if config.compile != "off" else ""
    lines = [
        "# exported: this file, loaded; model, train_dataset and compute_loss(model, batch) are yours",
        "import torch",
        "from accelerate import Accelerator",
        "from accelerate.utils import TorchDynamoPlugin" if plugin else None,
        f'accelerator = Accelerator(**exported["Accelerator"]{plugin})',
    ]
    lines += _forms.workload_knob_lines(config)
    if _forms.tuned_on_cuda(document):
        backend = _forms.cuda_backend_lines(config)
        if config.precision == "fp32" and config.compile != "off":
            # accelerate/state.py (AcceleratorState, accelerate 1.x): a dynamo backend other than "no" with
            # mixed_precision "no" on a CUDA device sets torch.backends.cuda.matmul.allow_tf32 = True.
            backend[0] = (
                "torch.backends.cuda.matmul.allow_tf32 = False  # after Accelerator(): Accelerate turns TF32 "
                'matmuls on with a dynamo backend and mixed_precision "no" on CUDA; off again, as measured'
            )
        lines += backend
    lines += _forms.model_lines(config, compile_model=False)  # the Accelerator compiles in prepare()
    lines += [
        _forms.optimizer_line(document),
        'loader = torch.utils.data.DataLoader(train_dataset, **exported["DataLoader"])',
        *_forms.one_cycle_lines(
            document,
            "optimizer",
            str(total_steps) if total_steps is not None else f"len(loader) // {config.accumulation_steps} * {epochs}",
        ),
        "model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)",
        f"for epoch in range({epochs}):",
        "    for batch in loader:",
        "        with accelerator.accumulate(model):  # the optimizer steps every gradient_accumulation_steps batches",
        "            loss = compute_loss(model, batch)",
        "            accelerator.backward(loss)",
        "            optimizer.step()",
        "            scheduler.step()",
        "            optimizer.zero_grad()",
    ]
    return [line for line in lines if line is not None]
