"""Does the exported max_lr pay off? A full run of the demo with the exported config, once at the
LR range test's max_lr and once at the workload's base_lr, same seed, same OneCycle schedule.

    python benchmarks/lr_full_run.py --export best.yaml --epochs 2 --out benchmarks/results/lr_full_run.json

Reports the training loss (mean of the last 50 steps), the held-out loss and accuracy, and
whether either run diverged.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from autotune import training
from autotune.knobs._config import TrainConfig
from autotune.workload.demo import PatternImages, workload

HELD_OUT = 2048  # samples never trained on


def full_run(config: TrainConfig, max_lr: float, epochs: float, one_cycle: dict, seed: int = 0) -> dict:
    """The exported run through autotune.training (every knob as the trials applied it), at ``max_lr``."""
    torch.manual_seed(seed)
    job = workload()
    config = dataclasses.replace(config, max_lr=max_lr)
    args = {key: value for key, value in one_cycle.items() if key not in ("max_lr", "total_steps")}
    with training.backend_flags(config, "cpu"):
        total_steps = max(1, int(training.steps_per_epoch(len(job.dataset()), config) * epochs))
        run = training.Training(job, config, "cpu", total_steps=total_steps, one_cycle_args=args)
        losses: list[float] = []
        started = time.perf_counter()
        for _ in range(total_steps):
            losses.append(float(run.step()))
            if not math.isfinite(losses[-1]):
                break
    model = run.model
    model.eval()
    # The same class patterns, fresh samples: indices past the training set draw new noise and crops.
    train_size = len(job.dataset())
    held_out = PatternImages(size=train_size + HELD_OUT)
    indices = range(train_size, train_size + HELD_OUT)
    images = torch.stack([held_out[i][0] for i in indices])
    labels = torch.tensor([held_out[i][1] for i in indices])
    with torch.no_grad():
        logits = model(images)
    return {
        "max_lr": max_lr,
        "optimizer_steps": len(losses),
        "diverged": not all(math.isfinite(value) for value in losses),
        "train_loss_first_50": sum(losses[:50]) / min(50, len(losses)),
        "train_loss_last_50": sum(losses[-50:]) / min(50, len(losses)),
        "held_out_loss": float(F.cross_entropy(logits, labels)),
        "held_out_accuracy": float((logits.argmax(dim=1) == labels).float().mean()),
        "seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", default="best.yaml", help="autotune export-best output for the demo study")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--out", default=None, help="write the results here as JSON")
    args = parser.parse_args()
    document = yaml.safe_load(Path(args.export).read_text())
    config = TrainConfig.from_dict(document["config"])
    base_lr = workload().base_lr
    results = {
        "export": document["provenance"],
        "config": config.to_dict(),
        "epochs": args.epochs,
        "lr_find": document.get("lr_find"),
        "exported_max_lr": full_run(config, config.max_lr, args.epochs, document["one_cycle"]),
        "base_lr": full_run(config, base_lr, args.epochs, document["one_cycle"]),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
