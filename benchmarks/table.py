"""A tabular benchmark: real measurements of many configs of one workload, for replaying search policies.

Every config is drawn from the workload's space as this machine restricts it (the search's own plan:
the device filter, the cores, the workload's probes), batch sizes at the powers of two inside the
space's range. Each is measured in fresh trial processes, the way a search measures a trial, and in
several passes (each pass runs every config once, in a new order), so the machine's drift spreads
over all of them. Every run is written as it ends, one JSON line, so an interrupted table keeps what
it measured; a second invocation with the same --out goes on where the first stopped.

    python benchmarks/table.py --workload autotune.workload.demo:workload --configs 200 --passes 2 \
        --out benchmarks/results/table-demo-2026-12-02.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import platform
import random
import time
from pathlib import Path
from typing import Any

import torch

from autotune.knobs import TrainConfig
from autotune.knobs._space import SearchSpace
from autotune.runner import MeasureSettings, TrialJob, run_trial
from autotune.study import SearchOptions, plan_search


def domains(space: SearchSpace, baseline: TrainConfig) -> dict[str, list[Any]]:
    """Each knob's values in the table: its choices, the powers of two inside a batch range, or the
    baseline's value where the space fixes it there."""
    values: dict[str, list[Any]] = {}
    base = baseline.to_dict()
    for name, knob in space.knobs.items():
        if knob.is_workload_knob:
            continue
        if knob.choices is not None:
            values[name] = list(knob.choices)
        elif knob.low is not None and knob.high is not None:
            low, high = int(knob.low), int(knob.high)
            powers = [2**k for k in range(math.ceil(math.log2(low)), int(math.log2(high)) + 1)]
            values[name] = sorted({*powers, base[name]} & set(range(low, high + 1)))
        elif knob.from_baseline:
            values[name] = [base[name]]
        else:
            values[name] = [knob.fixed]
    return values


def draw_configs(
    values: dict[str, list[Any]], baseline: TrainConfig, count: int, seed: int, compile_share: float = 1.0
) -> list[dict[str, Any]]:
    """``count`` distinct configs: the baseline, every config one knob away from it, then uniform draws,
    except that a draw compiles (a mode other than "off") with probability ``compile_share`` only: a
    compiled trial costs ten times an eager one on a CPU."""
    base = baseline.to_dict()
    chosen: dict[str, dict[str, Any]] = {}

    def add(config: dict[str, Any]) -> None:
        normal = TrainConfig.from_dict({**base, **config}).normalized().to_dict()
        chosen.setdefault(json.dumps(normal, sort_keys=True), normal)

    add({})
    for name, options in values.items():
        for value in options:
            add({name: value})
    space_size = math.prod(len(options) for options in values.values())
    rng = random.Random(seed)
    modes = [mode for mode in values.get("compile", ["off"]) if mode != "off"]
    while len(chosen) < min(count, space_size):
        draw = {name: rng.choice(options) for name, options in values.items()}
        if modes:
            draw["compile"] = rng.choice(modes) if rng.random() < compile_share else "off"
        add(draw)
    return list(chosen.values())[: max(count, 1)]


def product_configs(values: dict[str, list[Any]], baseline: TrainConfig) -> list[dict[str, Any]]:
    """Every combination of ``values``, normalized (prefetch and persistence need workers), once each."""
    chosen: dict[str, dict[str, Any]] = {}
    names = list(values)
    for combination in itertools.product(*(values[name] for name in names)):
        config = TrainConfig.from_dict({**baseline.to_dict(), **dict(zip(names, combination, strict=True))})
        normal = config.normalized().to_dict()
        chosen.setdefault(json.dumps(normal, sort_keys=True), normal)
    return list(chosen.values())


def run_record(outcome: Any, config: dict[str, Any], pass_index: int, seconds: float) -> dict[str, Any]:
    """One run's line: its outcome and figures, its windows, and what it cost."""
    return {
        "config": config,
        "pass": pass_index,
        "status": outcome.status.value,
        "reason": outcome.reason[:300],
        "samples_per_second": outcome.samples_per_second,
        "windows": [round(w.samples_per_second, 3) for w in outcome.windows],
        "unit_per_second": outcome.unit_per_second,
        "unit": outcome.unit,
        "peak_memory_bytes": outcome.peak_memory_bytes,
        "warmup_seconds": outcome.warmup_seconds,
        "compile_seconds": outcome.compile_seconds,
        "data_wait_fraction": outcome.data_wait_fraction,
        "dataset_size": outcome.dataset_size,
        "loss_start": outcome.loss_start,
        "loss_end": outcome.loss_end,
        "wall_seconds": seconds,
    }


def measured(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip() and '"config"' in line]


def describe_machine(device: str) -> str:
    """The machine the table was measured on: its CPU model and the matmul extensions that decide which
    precisions are fast there (tables from two machines of one name can differ tenfold on bf16)."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    extensions = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma")))
    return (
        f"{model}, {torch.get_num_threads()} threads, {device}; CPU extensions: {' '.join(extensions) or 'none listed'}"
    )


def top_configs(out: Path, count: int, passes: int) -> list[dict[str, Any]]:
    """The ``count`` configs of the table at ``out`` with the highest mean figure so far, the ones a
    table's best is chosen among: more passes there keep its best from being one lucky run. The header
    records it."""
    runs: dict[str, list[dict[str, Any]]] = {}
    for line in measured(out):
        runs.setdefault(json.dumps(line["config"], sort_keys=True), []).append(line)

    def mean(lines: list[dict[str, Any]]) -> float:
        """Over every run, one that did not end ok counting 0."""
        ok = [line["unit_per_second"] or line["samples_per_second"] or 0.0 for line in lines if line["status"] == "ok"]
        return sum(ok) / len(lines)

    ranked = sorted(runs.values(), key=mean, reverse=True)[:count]
    lines = out.read_text().splitlines()
    header = json.loads(lines[0])
    header["table"]["top"] = {"configs": count, "passes": passes}
    out.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    return [group[0]["config"] for group in ranked]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", default="autotune.workload.demo:workload")
    parser.add_argument("--space", default=None, help="default: the workload's, else the shipped default.yaml")
    parser.add_argument("--configs", type=int, default=200, help="configs drawn (without --product)")
    parser.add_argument(
        "--product",
        default=None,
        help="JSON {knob: [values]}: every combination of these (the others at the baseline), not draws",
    )
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile-share", type=float, default=1.0, help="share of the draws that compile")
    parser.add_argument("--effective-batch", default="free", help="as search's --effective-batch (default free)")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--window-seconds", type=float, default=0.5)
    parser.add_argument("--trial-timeout", type=float, default=240.0)
    parser.add_argument(
        "--top",
        type=int,
        default=None,
        help="measure only the N best configs of the existing --out table, up to --passes passes each",
    )
    parser.add_argument("--hours", type=float, default=None, help="stop starting runs after this long")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    held = None if args.effective_batch == "recipe" else args.effective_batch
    effective_batch = held if held in (None, "free") else int(held)
    plan = plan_search(SearchOptions(workload=args.workload, space=args.space, effective_batch=effective_batch))
    values = domains(plan.space, plan.baseline)
    if args.product is not None:
        values = {name: [plan.baseline.to_dict()[name]] for name in values} | json.loads(args.product)
        configs = product_configs(values, plan.baseline)
    else:
        configs = draw_configs(values, plan.baseline, args.configs, args.seed, args.compile_share)
    measure = MeasureSettings(windows=args.windows, window_seconds=args.window_seconds, seed=args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        header = {
            "table": {
                "workload": args.workload,
                "space": plan.space.source,
                "domains": values,
                "baseline": plan.baseline.to_dict(),
                "configs": len(configs),
                "passes": args.passes,
                "compile_share": args.compile_share,
                "effective_batch": args.effective_batch,
                "measure": {"windows": args.windows, "window_seconds": args.window_seconds},
                "machine": describe_machine(plan.device.describe()),
                "torch": torch.__version__,
                "notes": plan.notes,
            }
        }
        out.write_text(json.dumps(header) + "\n")
    done = {(json.dumps(r["config"], sort_keys=True), r["pass"]) for r in measured(out)}
    if args.top is not None:
        configs = top_configs(out, args.top, args.passes)
    started = time.monotonic()
    for pass_index in range(args.passes):
        order = list(configs)
        random.Random(args.seed * 1000 + pass_index).shuffle(order)
        for config in order:
            if (json.dumps(config, sort_keys=True), pass_index) in done:
                continue
            if args.hours is not None and time.monotonic() - started > args.hours * 3600:
                print("time is up: the table is kept as far as it went", flush=True)
                return
            job = TrialJob(
                workload=args.workload,
                config=config,
                device=plan.device.torch_device,
                measure=measure,
                memory_budget_bytes=plan.budgets.memory_budget_bytes,
                timeout_seconds=args.trial_timeout,
            )
            began = time.monotonic()
            outcome = run_trial(job)
            line = run_record(outcome, config, pass_index, time.monotonic() - began)
            with out.open("a") as file:
                file.write(json.dumps(line) + "\n")
            print(f"pass {pass_index} {len(done) + 1}: {outcome.status.value} {outcome.samples_per_second}", flush=True)
            done.add((json.dumps(config, sort_keys=True), pass_index))


if __name__ == "__main__":
    main()
