"""Is a search's claim repeatable, and does its time budget hold? The same search, run twice in fresh
studies, should report speedups (winner against baseline, measured side by side at the end) that
differ by less than their stated spread; and `--timeout` should bound the whole search, the LR
range test and the re-measurement included.

    python benchmarks/search_repeatability.py --out benchmarks/results/search_repeatability.md

Each search is a fresh `autotune search` process, timed from outside.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import optuna
from projected_vs_actual import outputs, run  # the results' files; a command's wall seconds, its output in the log


def one_search(workload: str, options: list[str], folder: Path, log: Path) -> dict:
    storage = f"sqlite:///{folder / 'study.db'}"
    wall = run(
        [sys.executable, "-m", "autotune.cli", "search", "--workload", workload, "--storage", storage, *options], log
    )
    [summary] = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    paired = study.user_attrs.get("paired") or {}
    return {
        "options": options,
        "wall_seconds": round(wall, 1),
        "search_seconds": study.user_attrs.get("search_seconds"),
        "trials": len(study.trials),
        "winner": paired.get("trial"),
        "speedup": paired.get("speedup"),
        "noise": paired.get("noise"),
        "lr_find": bool(study.user_attrs.get("lr_find")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="autotune.workload.demo:workload")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--timeout", default="2m")
    parser.add_argument("--out", default="benchmarks/results/search_repeatability.md")
    args = parser.parse_args()
    out, log = outputs(args.out)
    runs = []
    for _attempt in (1, 2):
        with tempfile.TemporaryDirectory(prefix="autotune-repeat-") as folder:
            runs.append(one_search(args.workload, ["--trials", str(args.trials), "--seed", "0"], Path(folder), log))
        print(json.dumps(runs[-1]), flush=True)
    with tempfile.TemporaryDirectory(prefix="autotune-timeout-") as folder:
        bounded = one_search(args.workload, ["--trials", "1000", "--timeout", args.timeout], Path(folder), log)
    print(json.dumps(bounded), flush=True)

    import torch

    from autotune.knobs._units import parse_duration

    limit = parse_duration(args.timeout)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}"
    a, b = runs
    difference = abs(a["speedup"] - b["speedup"]) if a["speedup"] and b["speedup"] else None
    stated = max(a["noise"] or 0.0, b["noise"] or 0.0)
    lines = [
        "# Repeatability and the time budget",
        "",
        f"Measured {datetime.date.today()} on {machine} with `python benchmarks/search_repeatability.py` "
        f"(workload `{args.workload}`).",
        "",
        "| search | trials | wall time | winner | speedup (paired, end of search) | stated spread |",
        "|---|---|---|---|---|---|",
    ]
    for index, result in enumerate(runs, 1):
        speedup = f"{result['speedup']:.2f}x" if result["speedup"] else "-"
        noise = f"±{result['noise']:.1%}" if result["noise"] is not None else "-"
        lines.append(
            f"| #{index}: `--trials {args.trials} --seed 0` | {result['trials']} | {result['wall_seconds']:.0f} s "
            f"| #{result['winner']} | {speedup} | {noise} |"
        )
    if difference is not None:
        relative = difference / ((a["speedup"] + b["speedup"]) / 2)
        verdict = "within" if relative < stated else "outside"
        lines += [
            "",
            f"The two speedups differ by {difference:.2f} ({relative:.1%} of their mean), {verdict} the "
            f"larger stated spread (±{stated:.1%}).",
        ]
    lines += [
        "",
        f"`--timeout {args.timeout} --trials 1000`: the search process ran {bounded['wall_seconds']:.1f} s from start "
        f"to exit against a limit of {limit:.0f} s ({bounded['wall_seconds'] - limit:+.1f} s), {bounded['trials']} "
        f"trials, LR range test {'run' if bounded['lr_find'] else 'not run (the budget was spent)'}.",
        "",
    ]
    text = "\n".join(lines)
    out.write_text(text)
    out.with_suffix(".json").write_text(
        json.dumps({"machine": machine, "runs": runs, "timeout": bounded, "timeout_limit_seconds": limit}, indent=2)
        + "\n"
    )
    print(text)


if __name__ == "__main__":
    main()
