"""The export as a runnable Python script: the full training run through autotune.training._apply, the
module the trials measured with, so the run does what the trials did."""

from __future__ import annotations

from typing import Any

from autotune.export import _forms

_SCRIPT = '''\
"""Train with the config autotune exported: study {study}, trial #{trial}, {rate} on {device}.

    python {script} [--workload FILE.py:NAME] [--device DEVICE] [--epochs N] [--max-steps N] [--save FILE]

Knobs, OneCycle schedule, autocast, GradScaler, accumulation and TF32 flags act through
autotune.training._apply, as in the trials.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

from autotune import AutotuneError, TrainConfig, training
from autotune.workload import load_workload

CONFIG = {config}
ONE_CYCLE = {one_cycle}
WORKLOAD = {workload}
DEVICE = {device_literal}
EPOCHS = {epochs}
STEP_CLOSURE = {step_closure}  # the optimizer steps with a closure, as the search found it must


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default=WORKLOAD, required=WORKLOAD is None, help="FILE.py:NAME or MODULE:NAME")
    parser.add_argument("--device", default=DEVICE, help="default: %(default)s, where the config was tuned")
    parser.add_argument("--epochs", type=float, default=EPOCHS, help="length of the run (default: %(default)s)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    parser.add_argument("--save", default="model.pt", help="the trained model's state_dict (default: %(default)s)")
    args = parser.parse_args(argv)
    config = TrainConfig.from_dict(CONFIG)
    try:
        workload = load_workload(args.workload)
    except AutotuneError as exc:
        sys.exit(f"Error: {{exc}}")
    if STEP_CLOSURE:
        workload = dataclasses.replace(workload, step_closure=True)
    total_steps = ONE_CYCLE["total_steps"]
    if total_steps is None or args.epochs != EPOCHS:  # the schedule spans the run that is made
        dataset_size = len(workload.dataset(**config.factory_kwargs("dataset")))
        total_steps = max(1, int(training.steps_per_epoch(dataset_size, config) * args.epochs))
    steps = total_steps if args.max_steps is None else min(args.max_steps, total_steps)
    with training.backend_flags(config, args.device):
        run = training.Training(workload, config, args.device, total_steps=total_steps, one_cycle_args=ONE_CYCLE)
        begin = time.perf_counter()
        for step in range(1, steps + 1):
            loss = run.step()
            if step % 100 == 0 or step == steps:
                print(f"step {{step}}/{{total_steps}}: loss {{loss.item():.4f}}", flush=True)  # .item() syncs
        seconds = time.perf_counter() - begin
    samples_per_second = steps * config.effective_batch_size / seconds
    print(f"{{samples_per_second:.1f}} samples/s over {{steps}} steps (compile and warm-up included)")
    torch.save(run.model.state_dict(), args.save)
    print(f"model saved to {{args.save}}")


if __name__ == "__main__":
    main()
'''


def torch_script(document: dict[str, Any], name: str = "best_train.py") -> str:
    """A Python file, ``name``, that runs the full job with the exported config:
    ``python best_train.py [--workload FILE.py:NAME]``."""
    source = document.get("provenance") or {}
    rate = (document.get("measured") or {}).get("samples_per_second")
    device = _forms.tuned_device(document) or "cpu"
    return _SCRIPT.format(
        script=name,
        study=source.get("study"),
        trial=source.get("trial"),
        rate=f"{rate:.1f} samples/s" if rate is not None else "throughput not measured",
        device=source.get("device") or device,
        config=_mapping(_forms.export_config(document).to_dict()),
        one_cycle=_mapping(_forms.one_cycle_arguments(document)),
        workload=_forms.literal(source.get("workload")),
        device_literal=_forms.literal(device),
        epochs=_forms.literal(_forms.epochs(document)),
        step_closure=_forms.literal(bool(source.get("step_closure"))),
    )


def _mapping(values: dict[str, Any]) -> str:
    return (
        "{\n" + "".join(f"    {_forms.literal(key)}: {_forms.literal(value)},\n" for key, value in values.items()) + "}"
    )
