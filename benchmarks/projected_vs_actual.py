"""Does the full run do what the search projected? For each workload: `autotune search`, then
`autotune export-best`, then `autotune train --steps N` with the exported config, each a fresh
process as a user runs them; then the run record's figures against the export's.

    python benchmarks/projected_vs_actual.py --out benchmarks/results/projected_vs_actual.md

For each workload the table shows the trial's measured throughput and the full run's (steady
state, warm-up steps excluded as a trial excludes them), and the projected time of those N steps
(N x effective batch / measured rate + the trial's warm-up and compile) against the actual wall
time of the run (setup, warm-up, checkpoint at the end included). N is chosen from the measured
rate so that the run takes about --train-seconds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

DEFAULT_WORKLOADS = ["autotune.workload.demo:workload", "examples/multitask.py:workload"]


def outputs(out: str) -> tuple[Path, Path]:
    """The results file and its log beside it (``.log``, emptied), their folder made."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    log = path.with_suffix(".log")
    log.write_text("")
    return path, log


def run(command: list[str], log: Path) -> float:
    """Run an autotune command, its output appended to ``log``; its wall seconds."""
    begin = time.perf_counter()
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=True, env={**os.environ, "COLUMNS": "160"})
    return time.perf_counter() - begin


def one_workload(spec: str, trials: int, train_seconds: float, folder: Path, log: Path) -> dict:
    cli = [sys.executable, "-m", "autotune.cli"]
    storage = f"sqlite:///{folder / 'study.db'}"
    export = folder / "best.yaml"
    search_seconds = run([*cli, "search", "--workload", spec, "--storage", storage, "--trials", str(trials)], log)
    run([*cli, "export-best", "--storage", storage, "--out", str(export)], log)
    document = yaml.safe_load(export.read_text())
    measured = document["measured"]
    config = document["config"]
    effective_batch = config["batch_size"] * config["accumulation_steps"]
    steps = max(20, int(train_seconds * measured["samples_per_second"] / effective_batch))
    record_path = folder / "run.json"
    run(
        [
            *cli,
            "train",
            "--workload",
            spec,
            "--config",
            str(export),
            "--steps",
            str(steps),
            "--storage",
            storage,
            "--checkpoint-dir",
            str(folder / "checkpoints"),
            "--out",
            str(record_path),
        ],
        log,
    )
    record = json.loads(record_path.read_text())
    return {
        "workload": spec,
        "trial": document["provenance"]["trial"],
        "config": config,
        "unit": measured.get("unit") or "samples",
        "search_seconds": round(search_seconds, 1),
        "steps": steps,
        "measured_samples_per_second": measured["samples_per_second"],
        "measured_unit_per_second": measured.get("unit_per_second"),
        "actual_samples_per_second": record["samples_per_second"],
        "actual_unit_per_second": record["unit_per_second"],
        "throughput_ratio": record["throughput_ratio"],
        "projected_seconds": record["projected_seconds"],
        "actual_seconds": record["seconds"],
        "time_ratio": record["time_ratio"],
        "setup_seconds": record["setup_seconds"],
        "warmup_seconds": record["warmup_seconds"],
        "final_loss": record["final_loss"],
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| workload | trial | steps | measured (search) | actual (train) | ratio | projected time | actual time | "
        "ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        unit = r["unit"]
        measured = r["measured_unit_per_second"] or r["measured_samples_per_second"]
        actual = r["actual_unit_per_second"] or r["actual_samples_per_second"]
        lines.append(
            f"| {r['workload']} | #{r['trial']} | {r['steps']} | {measured:.1f} {unit}/s | {actual:.1f} {unit}/s "
            f"| {r['throughput_ratio']:.3f} | {r['projected_seconds']:.1f} s | {r['actual_seconds']:.1f} s "
            f"| {r['time_ratio']:.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="*", default=DEFAULT_WORKLOADS)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--train-seconds", type=float, default=60.0)
    parser.add_argument("--out", default="benchmarks/results/projected_vs_actual.md")
    args = parser.parse_args()
    out, log = outputs(args.out)
    rows = []
    for spec in args.workloads:
        with tempfile.TemporaryDirectory(prefix="autotune-bench-") as folder:
            rows.append(one_workload(spec, args.trials, args.train_seconds, Path(folder), log))
        print(json.dumps(rows[-1]), flush=True)
    import torch

    machine = (
        f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}"
    )
    text = (
        f"# Projected against actual\n\nMeasured {datetime.date.today()} on {machine} with "
        f"`python benchmarks/projected_vs_actual.py` ({args.trials} trials per search, runs of about "
        f"{args.train_seconds:.0f} s).\n\n{table(rows)}\n\n"
        "measured: the export's `measured:` throughput (median of the trial's timed windows); actual: the run "
        "record's steady-state throughput (each start's warm-up steps excluded). projected time: the export's "
        "projection for the same steps (steps x effective batch / measured rate + the trial's warm-up and "
        "compile); actual time: the run's wall time, setup and the final checkpoint included.\n"
    )
    out.write_text(text)
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
