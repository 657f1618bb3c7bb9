"""How finely a table can rank its own best configs.

The replay's goal counts a pick as good when its true figure (the table's mean of its runs) is at least
0.97 of the table's best. That threshold only means something where the table's means are known to better
than 3%. This script states, for each table:

- the configs within 3%, 5% and 10% of the best mean;
- the standard error of the best configs' means (run-to-run spread over the square root of their runs);
- a split-half check over the configs measured in at least four runs: each config's runs are split at random
  into two halves, the best config of one half is looked up in the other, and the share of splits where it
  is at 0.97 of that half's best is counted. It is what a search would reach if it measured every one of
  those configs in half of the table's runs and nothing else went wrong: an upper bound for any policy that
  measures fewer.

Run: python benchmarks/table_resolution.py benchmarks/results/table-*.jsonl
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from pathlib import Path
from typing import Any

from replay import Table  # the replay's table: its config keys and its true figure


def split_half(runs: dict[str, list[float]], splits: int, threshold: float, seed: int = 0) -> float:
    rng = random.Random(seed)
    hits = 0
    for _ in range(splits):
        first: dict[str, float] = {}
        second: dict[str, float] = {}
        for key, rates in runs.items():
            shuffled = rates[:]
            rng.shuffle(shuffled)
            half = len(shuffled) // 2
            first[key] = statistics.mean(shuffled[:half])
            second[key] = statistics.mean(shuffled[half:])
        pick = max(first, key=first.__getitem__)
        hits += second[pick] >= threshold * max(second.values())
    return hits / splits


def resolution(path: Path, splits: int, threshold: float) -> dict[str, Any]:
    table = Table.load(path)
    figures = {key: table.true_figure(key) for key in table.runs}
    ranked = sorted(figures, key=figures.__getitem__, reverse=True)
    best = figures[ranked[0]]
    top = [table.figures(key) for key in ranked[:5]]
    errors = [statistics.stdev(values) / math.sqrt(len(values)) / statistics.fmean(values) for values in top]
    repeated = {key: runs for key in table.runs if len(runs := table.figures(key)) >= 4}
    return {
        "table": path.name,
        "configs": len(figures),
        "best": round(best, 1),
        "within_3": sum(figure >= 0.97 * best for figure in figures.values()),
        "within_5": sum(figure >= 0.95 * best for figure in figures.values()),
        "within_10": sum(figure >= 0.90 * best for figure in figures.values()),
        "top5_runs": [len(values) for values in top],
        "top5_standard_error": round(statistics.median(errors), 3),
        "repeated_configs": len(repeated),
        "split_half_reach": round(split_half(repeated, splits, threshold), 3) if len(repeated) >= 2 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tables", nargs="+", type=Path)
    parser.add_argument("--splits", type=int, default=2000)
    parser.add_argument("--threshold", type=float, default=0.97)
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args()
    results = [resolution(path, args.splits, args.threshold) for path in args.tables]
    print(
        "| table | configs | best | within 3% / 5% / 10% | top 5: runs, standard error "
        "| configs with 4+ runs | split-half reach |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['table']} | {r['configs']} | {r['best']} | {r['within_3']} / {r['within_5']} / {r['within_10']} "
            f"| {r['top5_runs']}, {r['top5_standard_error']:.1%} | {r['repeated_configs']} | {r['split_half_reach']} |"
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
