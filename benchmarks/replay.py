"""Replay search policies against a tabular benchmark (benchmarks/table.py), over many seeds.

autotune's own search runs as it is (its sampler, pruning, fitted-curve skips, duplicate handling,
side-by-side re-measurement and export-best's choice); only the trial process is replaced, by a
lookup in the table. A run of a config is one of its recorded runs, its windows drawn from the
windows recorded for that config, and the run's recorded wall time (less the windows a pruned run
never took) is charged to a simulated clock. The other methods draw from the same table the same way:
random sampling, plain TPE and Optuna's GPSampler (each config measured once, the fastest figure
taken), the grid (every config, in a random order), and the peers' batch rules at the baseline's
other knobs: a DeepSpeed-style micro-batch search (doubling, stopping when throughput stops rising),
Lightning's power scaling (doubling to the largest batch that fits) and Hugging Face's
find_executable_batch_size (the largest batch, times 0.9 until it fits).

A method's figure at a moment is the table's mean throughput of the config it would pick then (its
true figure, not the noisy one it saw). This version replays the speed search by throughput: the
recipe checks of a changed effective batch need training runs, which a table does not hold, and are
taken as passed (so every method may change the batch, as the peers do).

    python benchmarks/replay.py benchmarks/results/table-demo-2026-12-02.jsonl --seeds 50 --trials 24
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
import yaml

from autotune.knobs import TrainConfig
from autotune.runner import MeasureSettings, Status, TrialOutcome, WindowResult

GOAL = 0.97  # of the table's best true figure


def config_key(config: dict[str, Any]) -> str:
    return json.dumps(TrainConfig.from_dict(config).normalized().to_dict(), sort_keys=True)


@dataclasses.dataclass
class Table:
    header: dict[str, Any]
    runs: dict[str, list[dict[str, Any]]]

    @classmethod
    def load(cls, path: Path) -> Table:
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        runs: dict[str, list[dict[str, Any]]] = {}
        for line in lines[1:]:
            runs.setdefault(config_key(line["config"]), []).append(line)
        return cls(lines[0]["table"], runs)

    def figures(self, key: str) -> list[float]:
        """The config's throughput in each of its runs that ended ok."""
        return [r["unit_per_second"] or r["samples_per_second"] for r in self.runs.get(key, []) if r["status"] == "ok"]

    def true_figure(self, key: str) -> float:
        """The config's mean throughput over its runs that ended ok (0: it never ran to the end)."""
        figures = self.figures(key)
        return statistics.fmean(figures) if figures else 0.0

    @property
    def best(self) -> float:
        return max(self.true_figure(key) for key in self.runs)

    @property
    def cost(self) -> float:
        """The table's summed wall cost: every config once (its mean run)."""
        return sum(statistics.fmean(r["wall_seconds"] for r in runs) for runs in self.runs.values())

    def configs(self) -> list[dict[str, Any]]:
        return [runs[0]["config"] for runs in self.runs.values()]


class Clock:
    def __init__(self) -> None:
        self.seconds = 0.0


class Lookup:
    """run_trial's stand-in: a recorded run of the job's config, with windows drawn from its records."""

    def __init__(self, table: Table, clock: Clock, rng: random.Random) -> None:
        self.table, self.clock, self.rng = table, clock, rng
        self.window_seconds = float(table.header["measure"]["window_seconds"])
        self.missing = 0

    def measure(self, config: dict[str, Any]) -> tuple[float | None, float]:
        """(a noisy figure, or None where the run did not end ok; its wall cost) — for the plain methods."""
        outcome = self(_Job(config))
        return (outcome.unit_per_second if outcome.status is Status.OK else None), outcome.wall_seconds or 0.0

    def __call__(self, job: Any, on_window: Any = None, slow_below: float | None = None, **_: Any) -> TrialOutcome:
        runs = self.table.runs.get(config_key(job.config))
        if not runs:
            self.missing += 1
            return TrialOutcome(status=Status.ERROR, reason="not in the table", wall_seconds=0.0)
        run = self.rng.choice(runs)
        if run["status"] != "ok":
            self.clock.seconds += run["wall_seconds"]
            return TrialOutcome(
                status=Status(run["status"]),
                reason=run["reason"],
                wall_seconds=run["wall_seconds"],
                peak_memory_bytes=run["peak_memory_bytes"],
            )
        pooled = [w for r in runs if r["status"] == "ok" for w in r["windows"]]
        ratio = (run["unit_per_second"] or run["samples_per_second"]) / run["samples_per_second"]
        windows: list[WindowResult] = []
        stop: tuple[Status, str] | None = None
        for index in range(len(run["windows"])):
            rate = self.rng.choice(pooled)
            samples = max(1, round(rate * self.window_seconds))
            window = WindowResult(index, 1, samples, samples * ratio, samples / rate, 0.0, run["loss_end"] or 0.0)
            windows.append(window)
            if index == 0 and slow_below is not None and window.units_per_second < slow_below:
                stop = (Status.SLOW, "below the slow threshold in the first window")
            if stop is None and on_window is not None:
                stop = on_window(window)
            if stop is not None:
                break
        skipped = len(run["windows"]) - len(windows)
        wall = max(0.0, run["wall_seconds"] - skipped * self.window_seconds)
        self.clock.seconds += wall
        rates = [w.samples_per_second for w in windows]
        median = statistics.median(rates)
        outcome = TrialOutcome(
            status=Status.OK if stop is None else stop[0],
            reason="" if stop is None else stop[1],
            samples_per_second=median,
            unit_per_second=median * ratio,
            unit=run["unit"],
            throughput_cv=statistics.pstdev(rates) / median if len(rates) > 1 else 0.0,
            peak_memory_bytes=run["peak_memory_bytes"],
            data_wait_fraction=run["data_wait_fraction"],
            warmup_seconds=run["warmup_seconds"],
            compile_seconds=run["compile_seconds"],
            loss_start=run["loss_start"],
            loss_end=run["loss_end"],
            dataset_size=run["dataset_size"],
            windows=windows,
            wall_seconds=wall,
            device="cpu",
        )
        return outcome


@dataclasses.dataclass
class _Job:
    config: dict[str, Any]


Curve = list[tuple[float, float]]  # (simulated seconds, true figure of the pick then)


def _plain(table: Table, lookup: Lookup, clock: Clock, order: Iterator[dict[str, Any]], trials: int) -> Curve:
    """Measure configs in ``order`` once each; the pick is the fastest figure seen."""
    curve: Curve = []
    best: tuple[float, str] | None = None
    for _, config in zip(range(trials), order, strict=False):
        figure, _cost = lookup.measure(config)
        if figure is not None and (best is None or figure > best[0]):
            best = (figure, config_key(config))
        curve.append((clock.seconds, table.true_figure(best[1]) if best else 0.0))
    return curve


def random_search(table: Table, lookup: Lookup, clock: Clock, rng: random.Random, trials: int) -> Curve:
    configs = table.configs()
    rng.shuffle(configs)
    return _plain(table, lookup, clock, iter(configs), trials)


def grid_search(table: Table, lookup: Lookup, clock: Clock, rng: random.Random, trials: int) -> Curve:
    configs = table.configs()
    rng.shuffle(configs)
    return _plain(table, lookup, clock, iter(configs), len(configs))


def _optuna_search(sampler: optuna.samplers.BaseSampler) -> Callable[..., Curve]:
    def run(table: Table, lookup: Lookup, clock: Clock, rng: random.Random, trials: int) -> Curve:
        domains = {name: values for name, values in table.header["domains"].items() if len(values) > 1}
        study = optuna.create_study(direction="maximize", sampler=sampler)
        curve: Curve = []
        best: tuple[float, str] | None = None
        base = table.header["baseline"]
        for _ in range(trials):
            trial = study.ask()
            config = {**base, **{name: trial.suggest_categorical(name, values) for name, values in domains.items()}}
            figure, _cost = lookup.measure(config)
            study.tell(trial, figure if figure is not None else 0.0)
            if figure is not None and (best is None or figure > best[0]):
                best = (figure, config_key(config))
            curve.append((clock.seconds, table.true_figure(best[1]) if best else 0.0))
        return curve

    return run


def _batches(table: Table) -> list[int]:
    return sorted(table.header["domains"]["batch_size"])


def _at_batch(table: Table, batch: int) -> dict[str, Any]:
    return {**table.header["baseline"], "batch_size": batch}


def deepspeed_rule(table: Table, lookup: Lookup, clock: Clock, rng: random.Random, trials: int) -> Curve:
    """Micro-batch sizes upward at the baseline's knobs; stop once one is no faster than the last."""
    curve: Curve = []
    best: tuple[float, int] | None = None
    for batch in _batches(table):
        figure, _ = lookup.measure(_at_batch(table, batch))
        if figure is None or (best is not None and figure <= best[0]):
            curve.append((clock.seconds, curve[-1][1] if curve else 0.0))
            break
        best = (figure, batch)
        curve.append((clock.seconds, table.true_figure(config_key(_at_batch(table, batch)))))
    return curve


def lightning_rule(table: Table, lookup: Lookup, clock: Clock, rng: random.Random, trials: int) -> Curve:
    """Double the batch while it fits; take the largest that fitted (Lightning's power scaling)."""
    curve: Curve = []
    fits: int | None = None
    for batch in _batches(table):
        figure, _ = lookup.measure(_at_batch(table, batch))
        if figure is None:
            break
        fits = batch
        curve.append((clock.seconds, table.true_figure(config_key(_at_batch(table, fits)))))
    return curve


def hf_rule(table: Table, lookup: Lookup, clock: Clock, rng: random.Random, trials: int) -> Curve:
    """From the largest batch down by 0.9 until one fits (find_executable_batch_size)."""
    batch = max(_batches(table))
    while batch >= 1:
        candidates = [b for b in _batches(table) if b <= batch]
        if not candidates:
            break
        figure, _ = lookup.measure(_at_batch(table, max(candidates)))
        if figure is not None:
            return [(clock.seconds, table.true_figure(config_key(_at_batch(table, max(candidates)))))]
        batch = int(batch * 0.9)
    return [(clock.seconds, 0.0)]


def autotune_search(
    table: Table, lookup: Lookup, clock: Clock, rng: random.Random, trials: int, sampler: str = "guided"
) -> Curve:
    """autotune's search and export-best, with the table standing in for the trial processes."""
    from autotune import SearchOptions, export_best, search
    from autotune.study import SearchListener, _loop, _recipe_check

    curve: Curve = []

    class Follow(SearchListener):
        def on_trial_end(self, trial: Any, best: Any) -> None:
            figure = table.true_figure(config_key(best.user_attrs["config"])) if best is not None else 0.0
            curve.append((clock.seconds, figure))

    space = {
        "knobs": {name: values if len(values) > 1 else values[0] for name, values in table.header["domains"].items()}
    }
    measure = table.header["measure"]
    with tempfile.TemporaryDirectory() as folder, _stand_ins(lookup, _loop, _recipe_check):
        path = Path(folder) / "space.yaml"
        path.write_text(yaml.safe_dump(space))
        storage = f"sqlite:///{folder}/replay.db"
        options = SearchOptions(
            workload=table.header["workload"],
            storage=storage,
            study_name="replay",
            space=str(path),
            n_trials=trials,
            seed=rng.randrange(2**31),
            lr_find=False,
            effective_batch="free",
            objective="throughput",
            sampler=sampler,
            measure=MeasureSettings(windows=measure["windows"], window_seconds=measure["window_seconds"]),
        )
        search(options, Follow())
        document = export_best("replay", storage).document
        chosen = document["config"]
        if os.environ.get("REPLAY_DEBUG"):
            print("\n".join(document["selection"]["explanation"]))
    curve.append((clock.seconds, table.true_figure(config_key(chosen))))
    return curve


@contextlib.contextmanager
def _stand_ins(lookup: Lookup, loop: Any, recipe_check: Any) -> Iterator[None]:
    """The trial processes replaced by the table; the recipe checks taken as passed."""
    import autotune.study._checks as checks
    import autotune.study._objective as objective
    import autotune.study._verify as verify
    import autotune.training._apply as apply

    saved = [(module, "run_trial", module.run_trial) for module in (checks, objective, verify)]
    # The table's domains are what its machine could run: this machine's precision probe does not apply.
    saved.append((apply, "slow_precisions", apply.slow_precisions))
    apply.slow_precisions = lambda device, precisions: {}
    saved.append((loop, "check_changed_batch", loop.check_changed_batch))
    saved.append((recipe_check, "exportable", recipe_check.exportable))
    for module in (checks, objective, verify):
        module.run_trial = lookup
    loop.check_changed_batch = lambda study, best, *args, **kwargs: (best, [])
    recipe_check.exportable = lambda candidates, *args, **kwargs: (list(candidates), [])
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


METHODS: dict[str, Callable[..., Curve]] = {
    "autotune": autotune_search,
    "autotune-tpe": lambda *args: autotune_search(*args, sampler="tpe"),
    "random": random_search,
    "tpe": _optuna_search(optuna.samplers.TPESampler()),
    "gp": _optuna_search(optuna.samplers.GPSampler()),
    "grid": grid_search,
    "deepspeed": deepspeed_rule,
    "lightning": lightning_rule,
    "hf": hf_rule,
}


def reached(curve: Curve, goal: float) -> float | None:
    """The simulated seconds at which the pick first reached ``goal``."""
    return next((seconds for seconds, figure in curve if figure >= goal), None)


def replay(table: Table, methods: list[str], seeds: int, trials: int) -> dict[str, list[Curve]]:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    curves: dict[str, list[Curve]] = {name: [] for name in methods}
    for seed in range(seeds):
        for name in methods:
            clock = Clock()
            rng = random.Random(seed * 7919 + sum(map(ord, name)))
            method = METHODS[name]
            if name in ("tpe", "gp"):
                sampler = (
                    optuna.samplers.TPESampler(seed=seed) if name == "tpe" else optuna.samplers.GPSampler(seed=seed)
                )
                method = _optuna_search(sampler)
            curve = method(table, Lookup(table, clock, rng), clock, rng, trials)
            curves[name].append(curve or [(clock.seconds, 0.0)])  # a method that measured nothing picked nothing
        print(
            f"seed {seed}: " + ", ".join(f"{n} {c[-1][-1][1] / table.best:.3f}" for n, c in curves.items()), flush=True
        )
    return curves


def summary(table: Table, curves: dict[str, list[Curve]]) -> list[str]:
    best, budget = table.best, 0.05 * table.cost
    lines = [
        f"| method | seeds | final pick / best (median, 10th pct) | reach {GOAL} within {budget:.0f} s "
        f"(5% of the table's {table.cost:.0f} s) | median time to {GOAL} (s) | median search time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, runs in curves.items():
        finals = sorted(run[-1][1] / best for run in runs if run)
        times = [reached(run, GOAL * best) for run in runs]
        within = sum(1 for t in times if t is not None and t <= budget)
        reach = sorted(t if t is not None else math.inf for t in times)
        ends = [run[-1][0] for run in runs if run]
        p10 = finals[max(0, math.ceil(0.1 * len(finals)) - 1)] if finals else 0.0
        median_reach = statistics.median(reach) if reach else math.inf
        lines.append(
            f"| {name} | {len(runs)} | {statistics.median(finals):.3f}, {p10:.3f} | {within}/{len(runs)} | "
            f"{'never' if math.isinf(median_reach) else f'{median_reach:.0f}'} | {statistics.median(ends):.0f} |"
        )
    return lines


def plot(table: Table, curves: dict[str, list[Curve]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    horizon = max(run[-1][0] for runs in curves.values() for run in runs if run)
    grid = [horizon * i / 200 for i in range(201)]
    figure, axis = plt.subplots(figsize=(8, 5))
    for name, runs in curves.items():
        at = [[next((f for s, f in reversed(run) if s <= t), 0.0) / table.best for t in grid] for run in runs]
        median = [statistics.median(column) for column in zip(*at, strict=True)]
        p10 = [sorted(column)[max(0, math.ceil(0.1 * len(column)) - 1)] for column in zip(*at, strict=True)]
        line = axis.plot(grid, median, label=name)[0]
        axis.fill_between(grid, p10, median, color=line.get_color(), alpha=0.15)
    axis.axhline(GOAL, color="grey", linestyle=":")
    axis.axvline(0.05 * table.cost, color="grey", linestyle="--")  # 5% of the table's summed wall cost
    axis.set_xscale("log")
    axis.set_xlim(1, horizon)
    axis.set_ylim(0.3, 1.02)
    axis.set_xlabel("simulated search seconds (dashed: 5% of the table's cost)")
    axis.set_ylabel("pick's true figure / table's best")
    axis.set_title("median over seeds; band down to the 10th percentile", fontsize=9)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table")
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default=None, help="default: benchmarks/results/replay-<date>.md")
    args = parser.parse_args()
    table = Table.load(Path(args.table))
    began = time.monotonic()
    curves = replay(table, args.methods.split(","), args.seeds, args.trials)
    out = Path(args.out or f"benchmarks/results/replay-{time.strftime('%Y-%m-%d')}.md")
    plot(table, curves, out.with_suffix(".png"))
    out.with_suffix(".json").write_text(json.dumps(curves))
    lines = [
        f"# Replay of {table.header['workload']} ({Path(args.table).name})",
        "",
        f"{len(table.runs)} configs, {sum(len(r) for r in table.runs.values())} runs; the best true figure "
        f"{table.best:.1f}/s. {args.seeds} seeds, {args.trials} trials for the samplers; "
        f"`python {' '.join(['benchmarks/replay.py', *sys.argv[1:]])}` ({time.monotonic() - began:.0f} s).",
        "",
        *summary(table, curves),
        "",
        f"![anytime curve]({out.with_suffix('.png').name})",
    ]
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
