"""Peer methods for the benchmark suite: what other tools pick for a workload.

Each peer gets a workload and the suite's memory budget and writes the config it would pick, in
autotune's knob names. It does not measure the pick: another script measures every pick the same way.

    python benchmarks/suite/peers.py METHOD --workload SPEC --max-memory BYTES --out result.json
        [--budget-seconds N]   (pytorch-autotune's time budget, default 90)
        [--start-batch N]      (hf-largest's first batch, default 512)

Methods:

pytorch-autotune
    ``pytorch_autotune.autotune`` (PyPI pytorch-autotune 2.0.0) on device="cpu", cache=False,
    budget=--budget-seconds, lr=base_lr and the workload's optimizer. It times precision, compile,
    channels_last and fused optimizers at a fixed batch: the first batch at the baseline's batch
    size. It computes the loss itself from the model's output, so the model it gets is a wrapper
    whose forward runs ``workload.loss(model, batch)`` and returns that scalar; pytorch-autotune then
    takes ``output.float().mean()``, the scalar itself. It gets the batch's first tensor (so a 4-D
    image batch and the inner model's Conv2d layers let it try channels_last) or, for dict batches,
    the dict as keyword arguments; the wrapper rebuilds the full batch around it. Its pick maps to
    autotune's knobs (fp32_default and tf32 -> fp32, amp_bf16 -> bf16, amp_fp16 -> fp16); the rest
    of the baseline, batch size and accumulation included, is kept. The fused flag goes to the notes.

lightning
    ``Tuner(trainer).scale_batch_size(module, mode="power", init_val=<baseline batch>,
    steps_per_trial=3)``: Lightning doubles the batch until a trial runs out of memory, then returns
    half of the failing size; it also stops at the dataset's length and at its max_val (8192).

hf-largest
    What Hugging Face's ``auto_find_batch_size`` does: accelerate's ``find_executable_batch_size``,
    starting at --start-batch (capped at the dataset's length) and multiplying the batch by 0.9
    after each out-of-memory error. The pick is the first batch that fits.

The memory budget on a CPU. Nothing runs out of memory on a CPU before the whole machine does, so
the budget is enforced the way an out-of-memory error would show itself: when the peak resident
memory of the process running the training steps goes over --max-memory, a
``RuntimeError("DefaultCPUAllocator: can't allocate memory: ...")`` is raised. That single-argument
RuntimeError is what torch raises when a CPU allocation fails, and what both Lightning's
``is_oom_error`` and accelerate's ``should_reduce_batch_size`` treat as running out of memory, so
each tool backs off as it would on a GPU. A process's peak never goes down:

* lightning checks the peak in its own process, after each backward and each training step. Power
  mode only grows the batch until the first failure, so a peak that only grows is enough. (When the
  baseline's batch is already over the budget, every smaller batch fails too and the peer ends
  with an error: Lightning halves down to batch 0.)
* hf-largest tries each batch in a fresh process (this script with the hidden ``--probe BATCH``:
  3 training steps at that batch, then the peak printed as JSON). The parent raises the error when
  the probe's peak is over the budget or when the probe was killed for memory.

The peak is Linux's VmHWM, as autotune's trial harness reads it (ru_maxrss survives exec and can
report a bigger parent's peak); elsewhere ru_maxrss. The batch-size trials of lightning and
hf-largest train in fp32, eager, without gradient checkpointing, with the baseline's num_workers;
every method (and each probe) seeds torch with 0, so the model and the shuffled batches repeat.

The result JSON: {"method", "config" (autotune knobs), "search_seconds" (the method's own wall time:
imports excluded, building the model included; for hf-largest the sum of its probes' times after
their imports), "notes", "tried"}. When a peer cannot run the workload it writes {"method",
"config": null, "error"} and exits 1.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autotune.knobs._config import TrainConfig
from autotune.runner._memory import process_peak_rss
from autotune.workload import Workload, load_workload

METHODS = ("pytorch-autotune", "lightning", "hf-largest")
STEPS_PER_TRIAL = 3
PA_PRECISION = {"fp32_default": "fp32", "tf32": "fp32", "amp_bf16": "bf16", "amp_fp16": "fp16"}


# --------------------------------------------------------------------------- helpers


def cpu_oom_error(peak: int, budget: int) -> RuntimeError:
    """The error torch raises when a CPU allocation fails, as Lightning and accelerate recognise it."""
    return RuntimeError(
        f"DefaultCPUAllocator: can't allocate memory: {peak} bytes above the suite's memory budget of {budget} bytes"
    )


def baseline_config(workload: Workload) -> dict[str, Any]:
    """The baseline's knobs, completed with autotune's defaults (batch_size 32 when it has none)."""
    return TrainConfig.from_dict(workload.baseline_overrides(), source="Workload.baseline").to_dict()


def make_optimizer(workload: Workload, params: Any) -> torch.optim.Optimizer:
    if workload.optimizer is not None:
        return workload.optimizer(params, workload.base_lr)
    return torch.optim.AdamW(params, lr=workload.base_lr)


def make_loader(workload: Workload, dataset: Any, batch_size: int, num_workers: int, shuffle: bool = True):
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=workload.collate_fn, num_workers=num_workers
    )


def one_line(exc: BaseException) -> str:
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


# --------------------------------------------------------------------------- pytorch-autotune


class LossAsOutput(nn.Module):
    """Runs ``workload.loss(model, batch)`` and returns the scalar loss as the model's output.

    pytorch-autotune calls ``wrapper(first_tensor)`` (or ``wrapper(**batch)`` for a dict batch); the
    wrapper puts the rest of the batch back. The inner model is a submodule, so pytorch-autotune's
    Conv2d check, ``.to(memory_format=...)`` and weight snapshots all reach it.
    """

    def __init__(self, workload: Workload, model: nn.Module, batch: Any) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = workload.loss
        self.batch_type = type(batch)
        self.rest = list(batch[1:]) if isinstance(batch, (tuple, list)) else []

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs:
            batch = kwargs
        elif self.batch_type in (tuple, list):
            batch = self.batch_type([args[0], *self.rest])
        else:
            batch = args[0]
        return self.loss_fn(self.model, batch)


def example_input(batch: Any) -> Any:
    """What pytorch-autotune is given in place of the batch: a tensor or a dict of keyword arguments."""
    if isinstance(batch, dict) or isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    raise TypeError(
        "pytorch-autotune needs a tensor, a dict or a tuple starting with a tensor; the batch is "
        f"{type(batch).__name__}"
    )


def run_pytorch_autotune(workload: Workload, args: argparse.Namespace) -> dict[str, Any]:
    from pytorch_autotune import autotune

    config = baseline_config(workload)
    started = time.perf_counter()
    model = workload.model()
    loader = make_loader(workload, workload.dataset(), config["batch_size"], num_workers=0, shuffle=False)
    batch = next(iter(loader))
    wrapper = LossAsOutput(workload, model, batch)
    optimizer: Any = "adamw"
    if workload.optimizer is not None:
        optimizer = lambda params: workload.optimizer(params, workload.base_lr)  # noqa: E731
    result = autotune(
        wrapper,
        example_input(batch),
        # The output is the loss already. pytorch-autotune's default for a tensor batch is this same
        # function; for a dict batch it would look for `output.loss`, which a tensor does not have.
        loss_fn=lambda output: output.float().mean(),
        optimizer=optimizer,
        lr=workload.base_lr,
        budget=args.budget_seconds,
        device="cpu",
        cache=False,
    )
    seconds = time.perf_counter() - started

    pick = result.config
    report = result.report.to_dict()
    config.update(precision=PA_PRECISION[pick.precision], compile=pick.compile, channels_last=pick.channels_last)
    statuses = [t["status"] for t in report["trials"]]
    notes = [
        f"picked [{pick.label}] at batch {config['batch_size']}: {result.report.winner.ms_per_step:.2f} ms/step, "
        f"baseline {report['baseline_ms']:.2f} ms/step",
        f"fused_opt={pick.fused_opt}"
        + (" (not applied: the workload's optimizer callable is used as given)" if workload.optimizer else ""),
        f"{len(statuses)} trials: {statuses.count('ok')} ok, {statuses.count('disqualified')} disqualified, "
        f"{statuses.count('skipped')} skipped for the {args.budget_seconds:g}s budget",
    ]
    if pick.precision == "tf32":
        notes.append("tf32 picked: it only sets CUDA flags, so on a CPU it is fp32")
    return {"config": config, "search_seconds": seconds, "notes": notes, "tried": report["trials"]}


# --------------------------------------------------------------------------- lightning


def run_lightning(workload: Workload, args: argparse.Namespace) -> dict[str, Any]:
    import lightning.pytorch as pl
    from lightning.pytorch.tuner import Tuner

    budget = args.max_memory
    config = baseline_config(workload)
    tried: dict[int, dict[str, Any]] = {}  # batch size -> {"batch_size", "peak_memory_bytes", "fits"}

    class WorkloadModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = workload.model()
            self.dataset = workload.dataset()
            self.batch_size = config["batch_size"]

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = workload.loss(self.model, batch)
            self.check_memory()
            return loss

        def on_after_backward(self) -> None:
            self.check_memory()

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            self.check_memory()

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return make_optimizer(workload, self.parameters())

        def train_dataloader(self) -> torch.utils.data.DataLoader:
            return make_loader(workload, self.dataset, self.batch_size, num_workers=config["num_workers"])

        def check_memory(self) -> None:
            peak = process_peak_rss()
            row = tried.setdefault(
                self.batch_size, {"batch_size": self.batch_size, "peak_memory_bytes": 0, "fits": True}
            )
            row["peak_memory_bytes"] = peak
            if peak > budget:
                row["fits"] = False
                raise cpu_oom_error(peak, budget)

    with tempfile.TemporaryDirectory() as root:  # Lightning saves and restores a checkpoint around the search
        started = time.perf_counter()
        module = WorkloadModule()
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            max_epochs=1,
            default_root_dir=root,
        )
        pick = Tuner(trainer).scale_batch_size(
            module, mode="power", init_val=config["batch_size"], steps_per_trial=STEPS_PER_TRIAL
        )
        seconds = time.perf_counter() - started

    rows = list(tried.values())
    sizes = ", ".join(f"{r['batch_size']} {'ok' if r['fits'] else 'over budget'}" for r in rows)
    notes = [f"power mode from {config['batch_size']}, {STEPS_PER_TRIAL} steps a trial: {sizes}"]
    failed = [r for r in rows if not r["fits"]]
    if failed:
        notes.append(
            f"stopped: batch {failed[0]['batch_size']} went over the memory budget; Lightning returned half of it"
        )
    elif pick >= len(module.dataset):
        notes.append(f"stopped: reached the dataset's length ({len(module.dataset)})")
    else:
        notes.append("stopped: Lightning's max_val (8192) or max_trials (25)")
    if not any(r["batch_size"] == pick and r["fits"] for r in rows):
        notes.append(f"Lightning returned batch {pick} without running it")
    config.update(batch_size=int(pick), accumulation_steps=1)
    return {"config": config, "search_seconds": seconds, "notes": notes, "tried": rows}


# --------------------------------------------------------------------------- hf-largest


def probe(workload: Workload, batch_size: int) -> dict[str, Any]:
    """Three training steps at ``batch_size`` in this (fresh) process; its peak memory after them."""
    started = time.perf_counter()
    model = workload.model()
    model.train()
    optimizer = make_optimizer(workload, model.parameters())
    loader = make_loader(workload, workload.dataset(), batch_size, num_workers=baseline_config(workload)["num_workers"])
    out_of_memory = False
    steps = 0
    try:
        for _, batch in zip(range(STEPS_PER_TRIAL), loader, strict=False):
            optimizer.zero_grad(set_to_none=True)
            workload.loss(model, batch).backward()
            optimizer.step()
            steps += 1
    except RuntimeError as exc:  # a real allocation failure
        if "can't allocate memory" not in str(exc):
            raise
        out_of_memory = True
    return {
        "batch_size": batch_size,
        "peak_memory_bytes": process_peak_rss(),
        "steps": steps,
        "out_of_memory": out_of_memory,
        "seconds": time.perf_counter() - started,
    }


def run_probe(args: argparse.Namespace, batch_size: int) -> dict[str, Any]:
    """Run ``probe`` in a fresh process: a process's peak memory never goes down."""
    command = [sys.executable, __file__, "hf-largest", "--workload", args.workload, "--probe", str(batch_size)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode == -signal.SIGKILL:  # the kernel's out-of-memory killer
        return {"batch_size": batch_size, "peak_memory_bytes": None, "out_of_memory": True, "killed": True}
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit status {done.returncode}"
        raise RuntimeError(f"the probe at batch {batch_size} failed: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_hf_largest(workload: Workload, args: argparse.Namespace) -> dict[str, Any]:
    from accelerate.utils import find_executable_batch_size

    budget = args.max_memory
    config = baseline_config(workload)
    tried: list[dict[str, Any]] = []
    started = time.perf_counter()
    dataset_length = len(workload.dataset())
    start = min(args.start_batch, dataset_length)

    @find_executable_batch_size(starting_batch_size=start)
    def largest_batch(batch_size: int) -> int:
        result = run_probe(args, batch_size)
        peak = result["peak_memory_bytes"]
        fits = not result["out_of_memory"] and peak <= budget
        tried.append({**result, "fits": fits})
        if result.get("killed"):
            raise RuntimeError(
                f"DefaultCPUAllocator: can't allocate memory: the probe at batch {batch_size} was killed"
            )
        if not fits:
            raise cpu_oom_error(peak, budget)
        return batch_size

    pick = largest_batch()
    wall = time.perf_counter() - started
    # The method's own time: each probe's time after its imports, as one process would spend it.
    seconds = sum(row.get("seconds", 0.0) for row in tried)
    notes = [
        f"started at {start} (--start-batch {args.start_batch}, dataset length {dataset_length}), x0.9 after each "
        f"out-of-memory error: {', '.join(str(r['batch_size']) for r in tried)}",
        f"stopped: batch {pick} fits ({tried[-1]['peak_memory_bytes']} bytes <= {budget})",
        f"{len(tried)} probes, {seconds:.1f}s of training-side time, "
        f"{wall:.1f}s of wall time with each probe's imports",
    ]
    config.update(batch_size=int(pick), accumulation_steps=1)
    return {"config": config, "search_seconds": seconds, "notes": notes, "tried": tried}


# --------------------------------------------------------------------------- main

RUNNERS = {"pytorch-autotune": run_pytorch_autotune, "lightning": run_lightning, "hf-largest": run_hf_largest}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=METHODS)
    parser.add_argument(
        "--workload", required=True, help="e.g. autotune.workload.demo:workload or examples/text.py:workload"
    )
    parser.add_argument("--max-memory", type=int, help="the suite's memory budget, bytes of peak resident memory")
    parser.add_argument("--out", type=Path, help="where to write the result JSON")
    parser.add_argument("--budget-seconds", type=float, default=90, help="pytorch-autotune's time budget")
    parser.add_argument("--start-batch", type=int, default=512, help="hf-largest's first batch size")
    parser.add_argument("--probe", type=int, help=argparse.SUPPRESS)  # hf-largest's child: one batch size
    args = parser.parse_args(argv)
    if args.probe is None and (args.max_memory is None or args.out is None):
        parser.error("--max-memory and --out are required")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe is not None:
        workload = load_workload(args.workload)
        torch.manual_seed(0)
        print(json.dumps(probe(workload, args.probe)))
        return 0
    try:
        workload = load_workload(args.workload)
        torch.manual_seed(0)
        result = {"method": args.method, **RUNNERS[args.method](workload, args)}
        status = 0
    except Exception as exc:
        result = {"method": args.method, "config": None, "error": one_line(exc)}
        status = 1
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main())
