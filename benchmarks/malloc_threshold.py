"""glibc's dynamic mmap threshold and the speed of one config, fresh process by fresh process.

    python benchmarks/malloc_threshold.py [--workload examples/detection.py:workload] [--runs 6] [--seconds 6]

glibc serves allocations above its mmap threshold (128 KiB at start) with fresh mmap()s, and
raises the threshold only as such blocks are freed. A training step's activations are such
blocks: until the threshold has grown past them, every step maps, zero-fills and unmaps them
again. Where it ends up depends on the order the sizes come in (images of varying size do), so
two fresh processes of one config can settle at different speeds. This script times the same
config in ``--runs`` fresh processes with glibc's defaults, then with the threshold fixed
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``), interleaved, with each process's minor
page faults, and writes benchmarks/results/malloc-threshold-<date>-<workload>.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIXED = {"MALLOC_MMAP_THRESHOLD_": str(32 * 1024**2), "MALLOC_TRIM_THRESHOLD_": str(256 * 1024**2)}


def one(spec: str, config: dict, seconds: float, env: dict[str, str]) -> dict[str, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "suite" / "measure.py"),
            "--one",
            "--workload",
            spec,
            "--config",
            json.dumps(config),
            "--seconds",
            str(seconds),
            "--warmup-steps",
            "3",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    run = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "rate": run["units_per_second"],
        "minor_faults": after.ru_minflt - before.ru_minflt,
        "system_seconds": after.ru_stime - before.ru_stime,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="examples/detection.py:workload")
    parser.add_argument("--config", default='{"batch_size": 31, "precision": "bf16", "channels_last": true}')
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    config = json.loads(args.config)
    results: dict[str, list[dict[str, float]]] = {"glibc defaults": [], "threshold fixed": []}
    for index in range(args.runs):
        for label, env in (("glibc defaults", {}), ("threshold fixed", FIXED)):
            results[label].append(one(args.workload, config, args.seconds, env))
            print(f"run {index + 1}: {label}: {results[label][-1]}", flush=True)
    lines = [
        f"# glibc's mmap threshold, {datetime.date.today().isoformat()}",
        "",
        f"Machine: {os.cpu_count()} CPU cores, {platform.platform()}, Python {platform.python_version()}. "
        f"Run: `python benchmarks/malloc_threshold.py --workload {args.workload} --config '{args.config}' "
        f"--runs {args.runs} --seconds {args.seconds:g}` (fresh processes, interleaved; "
        f"fixed: {', '.join(f'{k}={v}' for k, v in FIXED.items())}).",
        "",
        "| allocator | units/s per process | median | minor page faults per process (median) | system CPU s (median) |",
        "|---|---|---|---|---|",
    ]
    for label, runs in results.items():
        rates = [r["rate"] for r in runs]
        lines.append(
            f"| {label} | {', '.join(f'{r:.0f}' for r in rates)} | {statistics.median(rates):.1f} | "
            f"{statistics.median(r['minor_faults'] for r in runs):.0f} | "
            f"{statistics.median(r['system_seconds'] for r in runs):.2f} |"
        )
    name = args.workload.rpartition(":")[0].removesuffix(".py").replace("/", ".").rpartition(".")[2]
    out = ROOT / "benchmarks" / "results" / f"malloc-threshold-{datetime.date.today().isoformat()}-{name}.md"
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
