"""Trials per hour for 1, 2, 4 and 8 workers on one study: straight to PostgreSQL, and through
Optuna's gRPC storage proxy (``autotune proxy``).

For each way and each count, a fresh study of ``workloads/sleepy.py`` (a step that sleeps 100 ms) is
started with ``autotune search --trials 1`` (its baseline), then that many ``autotune worker``
processes join it for ``--seconds``. Each worker has a device-lock folder of its own, as if on a
machine of its own (on one machine, trials of one device take turns). Trials sleep rather than
compute, so a 2-core machine shows the storage's own scaling. Counted: the trials that ended inside
the steady window (from the moment every worker finished its first trial to the last trial the first
worker to stop finished, within ``--margin`` seconds of either end): each worker's trials from its
first to its last completion there, over that time, summed over the workers as trials per hour; their
median wall time; the workers' exit codes; and every storage error in their output.

Run: ``python benchmarks/workers.py`` (about 25 minutes on 2 CPU cores; needs the PostgreSQL of
``--storage`` and, for the proxy, ``pip install -e ".[grpc]"``); writes
``benchmarks/results/workers-<date>.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOAD = f"{HERE / 'workloads' / 'sleepy.py'}:workload"
# Small batches keep each step a sleep: batches of thousands of samples would make the DataLoader's
# collation the trial's work (CPU-bound on 2 cores), not the storage. A continuous max_lr draws no config twice.
SPACE = (
    "effective_batch: free\nknobs:\n  batch_size: {low: 1, high: 64}\n  max_lr: {low: 0.0001, high: 0.1, log: true}\n"
)
MEASURE = ["--window-seconds", "3", "--windows", "3", "--max-windows", "3", "--warmup-steps", "1"]
# What a storage failure prints: a database or gRPC error, a traceback.
STORAGE_ERROR = re.compile(
    r"Traceback|OperationalError|StorageError|_InactiveRpcError|StatusCode\.|Error: storage|connection lost"
)


def autotune(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "autotune.cli", *args],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_proxy(storage: str) -> tuple[subprocess.Popen[str], str]:
    """``autotune proxy`` over ``storage`` on a free port, once it answers; its process and URL."""
    port = free_port()
    proxy = autotune("proxy", "--storage", storage, "--host", "127.0.0.1", "--port", str(port))
    give_up = time.monotonic() + 60
    while time.monotonic() < give_up:
        if proxy.poll() is not None:
            raise SystemExit(f"autotune proxy exited: {proxy.communicate()[0]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proxy, f"grpc://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.2)
    proxy.kill()
    raise SystemExit("autotune proxy did not listen within 60 s")


def run_one(storage: str, via: str, workers: int, seconds: float, margin: float, folder: Path) -> dict:
    """One study, ``workers`` workers for ``seconds``: its trials per hour and its errors."""
    import optuna

    study = f"workers-{via}-{workers}-{uuid.uuid4().hex[:8]}"
    space = folder / "space.yaml"
    space.write_text(SPACE)
    first = autotune(
        "search", "--workload", WORKLOAD, "--space", str(space), "--storage", storage, "--study", study,
        "--trials", "1", "--no-lr-find", "--sampler", "random", "--no-pruning", "--slow-fraction", "0", *MEASURE,
    )  # fmt: skip
    output = first.communicate()[0]
    if first.returncode != 0:
        raise SystemExit(f"the first search failed: {output}")
    proxy, url = start_proxy(storage) if via == "proxy" else (None, storage)
    try:
        processes = []
        started = time.time()
        for index in range(workers):
            env = {**os.environ, "AUTOTUNE_CACHE_DIR": str(folder / f"cache-{via}-{workers}-{index}")}
            processes.append(
                autotune(
                    "worker",
                    "--study",
                    study,
                    "--storage",
                    url,
                    "--trials",
                    "100000",
                    "--timeout",
                    f"{seconds:.0f}s",
                    env=env,
                )  # fmt: skip
            )
        outputs = [process.communicate()[0] for process in processes]
        ended = time.time()
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.communicate(timeout=30)
    trials = optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)
    # Steady state: from the moment every worker finished its first trial (workers starting together on 2
    # cores take their time to import torch, and their first trials start their trial servers at once) to
    # ``margin`` before the end, or earlier:
    # to the moment the first worker stopped finishing trials (as its time ran out: a worker that does
    # not close the study leaves as soon as its trials are done).
    firsts: dict[int, float] = {}
    lasts: dict[int, float] = {}
    for t in trials:
        pid = t.user_attrs.get("pid")
        if pid is not None and t.datetime_complete is not None and not t.user_attrs.get("baseline"):
            firsts[pid] = min(firsts.get(pid, float("inf")), t.datetime_complete.timestamp())
            lasts[pid] = max(lasts.get(pid, 0.0), t.datetime_complete.timestamp())
    low = max([started + margin, *firsts.values()])
    high = min([started + seconds - margin, *lasts.values()])
    inside = [
        t
        for t in trials
        if t.datetime_complete is not None
        and low <= t.datetime_complete.timestamp() <= high
        and t.user_attrs.get("status") == "ok"
    ]
    durations = sorted((t.datetime_complete - t.datetime_start).total_seconds() for t in inside if t.datetime_start)
    # Each worker's rate is its trials between its first and its last completion inside the window, over
    # that time: a count of completions over the window's length reads high or low by up to a trial a
    # worker (a window of a few trials starts and ends anywhere in a trial).
    ends: dict[int, list[float]] = {}
    for t in inside:
        ends.setdefault(t.user_attrs["pid"], []).append(t.datetime_complete.timestamp())
    rates = [(len(e) - 1) / (max(e) - min(e)) for e in ends.values() if len(e) >= 2 and max(e) > min(e)]
    errors = [line for output in outputs for line in output.splitlines() if STORAGE_ERROR.search(line)]
    optuna.delete_study(study_name=study, storage=storage)
    return {
        "via": via,
        "workers": workers,
        "seconds": seconds,
        "window_seconds": high - low,
        "trials_in_window": len(inside),
        "trials_per_hour": sum(rates) * 3600,
        "workers_with_a_rate": len(rates),
        "completions_per_hour": len(inside) / (high - low) * 3600,
        "trials_total": len(trials),
        "steady_from_seconds": low - started,
        "median_trial_seconds": durations[len(durations) // 2] if durations else None,
        "exit_codes": [process.returncode for process in processes],
        "storage_errors": errors[:20],
        "wall_seconds": ended - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--via", nargs="+", choices=["direct", "proxy"], default=["direct", "proxy"])
    parser.add_argument("--seconds", type=float, default=150.0)
    parser.add_argument("--margin", type=float, default=15.0, help="Seconds left out at each end of a run.")
    parser.add_argument("--out", default=None, help="Results stem. Default: results/workers-<date>.")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="autotune-workers-") as folder:
        for via in args.via:
            for workers in args.workers:
                row = run_one(args.storage, via, workers, args.seconds, args.margin, Path(folder))
                print(json.dumps(row), flush=True)
                rows.append(row)
    stem = Path(args.out) if args.out else HERE / "results" / f"workers-{datetime.date.today().isoformat()}"
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    stem.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=1) + "\n")
    stem.with_suffix(".md").write_text(report(rows, machine, args))
    print(report(rows, machine, args))


def _step_seconds() -> float:
    """workloads/sleepy.py's STEP_SECONDS, read from the file the workers run."""
    match = re.search(r"^STEP_SECONDS = ([\d.]+)", (HERE / "workloads" / "sleepy.py").read_text(), re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


def report(rows: list[dict], machine: str, args: argparse.Namespace) -> str:
    lines = [
        "# Trials per hour against the number of workers on one study",
        "",
        f"`python benchmarks/workers.py` on {machine}; storage PostgreSQL at {args.storage.split('@')[-1]}; "
        f"each run {args.seconds:.0f} s, counted over the middle {args.seconds - 2 * args.margin:.0f} s; "
        f"the workload's step sleeps {_step_seconds() * 1000:.0f} ms (3 windows of 3 s a trial, random sampling, "
        "no pruning; batches of 1 to 64 and a continuous max_lr, so no config is drawn twice).",
        "",
        "Each worker's rate is its trials from its first to its last completion in the steady window, over that "
        "time; the trials per hour are the workers' rates summed. "
        "The window runs from the moment every worker finished its first trial (8 workers starting together on 2 cores "
        "take a while to import torch and start their trial servers) to the last trial the first worker to stop "
        "finished, within the margins.",
        "",
        "| way | workers | trials per hour | per worker | scaling over 1 worker | median trial (s) | counted over (s) "
        "| exit codes | storage errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        one = next((r for r in rows if r["via"] == row["via"] and r["workers"] == 1), None)
        scaling = row["trials_per_hour"] / one["trials_per_hour"] if one and one["trials_per_hour"] else float("nan")
        lines.append(
            f"| {row['via']} | {row['workers']} | {row['trials_per_hour']:.0f} | "
            f"{row['trials_per_hour'] / row['workers']:.0f} | {scaling:.2f}x | "
            f"{row['median_trial_seconds'] or float('nan'):.1f} | {row['window_seconds']:.0f} | "
            f"{', '.join(map(str, sorted(set(row['exit_codes']))))} | {len(row['storage_errors'])} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
