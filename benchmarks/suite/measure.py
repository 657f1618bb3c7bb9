"""The suite's one independent measurement: every method's pick timed the same way, in plain PyTorch.

    python benchmarks/suite/measure.py --workload SPEC --configs picks.json --rounds 3 --seconds 3 --out measured.json

It uses nothing of autotune but the workload contract (``load_workload`` and the Workload's
fields): the DataLoader, the model's preparation, autocast, the accumulation loop and the clock
are written here, so a pick is not judged by the harness that chose it. Each (round, config) is a
fresh process; the configs are interleaved, their order rotated every round, so drift and
neighbours hit all of them alike. A run trains ``--warmup-steps`` optimizer steps untimed (worker
start, compile), then times whole optimizer steps for ``--seconds``; the figure per config is the
median over rounds, with the spread (half the range, relative to the median).

picks.json is a list of {"label": str, "config": {knob: value}} with autotune's knob names.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_one(spec: str, config: dict[str, Any], seconds: float, warmup_steps: int) -> dict[str, Any]:
    """Train ``config`` for ``warmup_steps`` untimed optimizer steps, then ``seconds`` timed."""
    import torch

    sys.path.insert(0, str(ROOT))
    from autotune.workload import load_workload

    workload = load_workload(spec)
    if workload.step_closure:
        raise SystemExit("measure.py: optimizers that step with a closure are not supported")
    torch.manual_seed(0)
    knobs = config.get("workload_knobs") or {}
    model_kwargs = {k.split(".", 1)[1]: v for k, v in knobs.items() if k.startswith("model.")}
    dataset_kwargs = {k.split(".", 1)[1]: v for k, v in knobs.items() if k.startswith("dataset.")}
    dataset = workload.dataset(**dataset_kwargs)
    model = workload.model(**model_kwargs)
    if config.get("gradient_checkpointing"):
        if workload.gradient_checkpointing is not None:
            workload.gradient_checkpointing(model)
        else:
            model.gradient_checkpointing_enable()
    channels_last = bool(config.get("channels_last"))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    lr = config.get("max_lr") or workload.base_lr
    optimizer = workload.optimizer(params, lr) if workload.optimizer else torch.optim.AdamW(params, lr=lr)
    mode = config.get("compile", "off")
    forward_model = model if mode == "off" else torch.compile(model, mode=None if mode == "default" else mode)
    precision = config.get("precision", "fp32")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cpu") if precision == "fp16" else None
    workers = int(config.get("num_workers") or 0)
    batch_size = int(config["batch_size"])
    accumulation = int(config.get("accumulation_steps") or 1)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        collate_fn=workload.collate_fn,
        prefetch_factor=(config.get("prefetch_factor") or 2) if workers else None,
        persistent_workers=bool(config.get("persistent_workers")) and workers > 0,
    )
    count = workload.count

    def batches():
        while True:
            yield from loader

    def channels_last_inputs(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.contiguous(memory_format=torch.channels_last) if value.dim() == 4 else value
        if isinstance(value, (list, tuple)):
            return type(value)(channels_last_inputs(v) for v in value)
        if isinstance(value, dict):
            return {k: channels_last_inputs(v) for k, v in value.items()}
        return value

    stream = batches()

    def optimizer_step() -> tuple[int, float]:
        samples, units = 0, 0.0
        for _ in range(accumulation):
            batch = next(stream)
            units += float(count(batch)) if count else batch_size
            samples += batch_size
            if channels_last:
                batch = channels_last_inputs(batch)
            autocast = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
            with autocast:
                loss = workload.loss(forward_model, batch) / accumulation
            (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if workload.after_step is not None:
            workload.after_step(model, optimizer)
        return samples, units

    for _ in range(warmup_steps):
        optimizer_step()
    samples = steps = 0
    units = 0.0
    begin = time.perf_counter()
    while time.perf_counter() - begin < seconds or steps == 0:
        s, u = optimizer_step()
        samples += s
        units += u
        steps += 1
    elapsed = time.perf_counter() - begin
    return {
        "samples_per_second": samples / elapsed,
        "units_per_second": units / elapsed,
        "steps": steps,
        "seconds": elapsed,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def exception_line(stderr: str) -> str | None:
    """The exception a failed run ended with, in one line: the first line the last traceback does
    not indent (an exception whose message runs over many lines, as torch.compile's do, keeps its
    first line), else the last unindented line."""
    lines = stderr.splitlines()
    marker = "Traceback (most recent call last):"
    starts = [i for i, line in enumerate(lines) if line.startswith(marker)]
    after = lines[starts[-1] + 1 :] if starts else []
    for line in after:
        if line.strip() and not line[0].isspace():
            return line.strip()
    unindented = [line for line in lines if line.strip() and not line[0].isspace()]
    return unindented[-1].strip() if unindented else None


def summarise(rates: list[float]) -> dict[str, Any]:
    median = statistics.median(rates)
    return {
        "median": median,
        "spread": (max(rates) - min(rates)) / 2 / median if median else None,
        "rounds": rates,
    }


def measure(
    spec: str, picks: list[dict[str, Any]], rounds: int, seconds: float, warmup_steps: int, timeout: float, log=None
) -> list[dict[str, Any]]:
    """Every pick, ``rounds`` times, interleaved; each run a fresh process."""
    results: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(picks))}
    errors: dict[int, str] = {}
    for round_index in range(rounds):
        order = list(range(len(picks)))
        shift = round_index % len(order)
        for i in order[shift:] + order[:shift]:
            if i in errors:
                continue
            command = [
                sys.executable,
                __file__,
                "--one",
                "--workload",
                spec,
                "--config",
                json.dumps(picks[i]["config"]),
                "--seconds",
                str(seconds),
                "--warmup-steps",
                str(warmup_steps),
            ]
            try:
                done = subprocess.run(
                    command,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    cwd=ROOT,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
            except subprocess.TimeoutExpired:
                errors[i] = f"no result within {timeout:.0f}s"
                continue
            if done.returncode != 0:
                errors[i] = f"round {round_index + 1}: {exception_line(done.stderr) or f'exit {done.returncode}'}"
                continue
            run = json.loads(done.stdout.strip().splitlines()[-1])
            results[i].append(run)
            if log:
                print(
                    f"  round {round_index + 1}: {picks[i]['label']}: {run['units_per_second']:.1f}/s",
                    file=log,
                    flush=True,
                )
    measured = []
    for i, pick in enumerate(picks):
        runs = results[i]
        entry = {**pick, "runs": runs, "error": errors.get(i)}
        if runs:
            entry["units_per_second"] = summarise([r["units_per_second"] for r in runs])
            entry["samples_per_second"] = summarise([r["samples_per_second"] for r in runs])
            entry["peak_rss_bytes"] = max(r["peak_rss_bytes"] for r in runs)
        measured.append(entry)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", required=True)
    parser.add_argument("--configs", type=Path, help="picks.json: [{label, config}, ...]")
    parser.add_argument("--config", help="one config as JSON (with --one)")
    parser.add_argument("--one", action="store_true", help="measure --config once, in this process")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=300.0, help="per run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.workload, json.loads(args.config), args.seconds, args.warmup_steps)))
        return
    picks = json.loads(args.configs.read_text())
    measured = measure(args.workload, picks, args.rounds, args.seconds, args.warmup_steps, args.timeout, sys.stdout)
    text = json.dumps(measured, indent=1)
    if args.out:
        args.out.write_text(text)
    else:
        print(text)


if __name__ == "__main__":
    main()
