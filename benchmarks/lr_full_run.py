"""Does the exported max_lr pay off? A full run of the demo with the exported config, once at the
LR range test's max_lr and once at the workload's base_lr, same seed, same OneCycle schedule.

    python benchmarks/lr_full_run.py --export best.yaml --epochs 2 --out benchmarks/results/lr_full_run.json

Reports the training loss (mean of the last 50 steps), the held-out loss and accuracy, and
whether either run diverged.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from autotune.config import TrainConfig
from autotune.demo import PatternImages, workload

HELD_OUT = 2048  # samples never trained on


def full_run(config: TrainConfig, max_lr: float, epochs: float, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    job = workload()
    model = job.model()
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if config.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = job.optimizer(model.parameters(), max_lr)
    loader = torch.utils.data.DataLoader(
        job.dataset(), batch_size=config.batch_size, shuffle=True, drop_last=True, num_workers=config.num_workers,
        prefetch_factor=config.prefetch_factor if config.num_workers else None,
        persistent_workers=config.persistent_workers if config.num_workers else False,
    )
    steps_per_epoch = len(loader) // config.accumulation_steps
    total_steps = max(1, int(steps_per_epoch * epochs))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps)
    dtype = {"bf16": torch.bfloat16}.get(config.precision)
    losses: list[float] = []
    started = time.perf_counter()
    step = 0
    while step < total_steps:
        for index, (images, labels) in enumerate(loader):
            if config.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(model(images), labels) / config.accumulation_steps
            loss.backward()
            if (index + 1) % config.accumulation_steps:
                continue
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()
            losses.append(float(loss.detach()) * config.accumulation_steps)
            step += 1
            if step >= total_steps or not math.isfinite(losses[-1]):
                break
        if losses and not math.isfinite(losses[-1]):
            break
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
        "exported_max_lr": full_run(config, config.max_lr, args.epochs),
        "base_lr": full_run(config, base_lr, args.epochs),
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
