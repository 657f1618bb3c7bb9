"""autotune against the oracle and its peers: one command, one committed table.

    python benchmarks/suite/run.py                 # every workload, about 65 minutes on 2 CPU cores
    python benchmarks/suite/run.py --workloads demo --trials 6

For each workload, each method picks a config, with its search cost timed from outside:

- grid:   the exhaustive grid over a shared sub-space (benchmarks/suite/spaces/<workload>.yaml),
          every point measured in full (`autotune search --sampler grid --no-pruning`): the oracle;
- autotune: `autotune search --trials N` with its defaults (the workload's space, TPE, pruning,
          curves, the side-by-side re-measurement), then `autotune export-best`;
- random, tpe: a hand-written Optuna loop's picks: the same space and trial budget, no pruning
          (`--sampler random|tpe --no-pruning`), the trial with the best throughput;
- pytorch-autotune 2.0.0, Lightning's scale_batch_size, and the largest batch that fits with
          Hugging Face's 0.9 back-off from the top of the workload's batch range
          (benchmarks/suite/peers.py); every method under one memory budget (--max-memory, 2 GiB);
- baseline: the workload's own config, for reference.

Every pick, the baseline's included, is then measured again by one independent plain-PyTorch
script (benchmarks/suite/measure.py), interleaved over rounds, each run a fresh process. The
fidelity of autotune's pick: its short trial run again against a run 10x as long (`autotune train`),
interleaved over rounds; the figure the search stated against the long runs; and their projected
wall time against their actual one. The search costs of the grid, random
and tpe leave out the side-by-side re-measurement that `autotune search` adds at its end.

Writes benchmarks/results/suite-<date>.md, with the raw figures (.json) and every command's output
(.log) beside it; the studies stay in a temporary folder (--work to keep them).
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
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
SUITE = Path(__file__).resolve().parent
sys.path.insert(0, str(SUITE))
import measure as independent  # noqa: E402

WORKLOADS = {
    "demo": "autotune.workload.demo:workload",
    "text": "examples/text.py:workload",
    "detection": "examples/detection.py:workload",
    "loader_bound": "benchmarks/workloads/loader_bound.py:workload",
}
# Where hf-largest starts backing off: the largest batch of the workload's own search space.
START_BATCH = {"demo": 256, "text": 64, "detection": 32, "loader_bound": 256}
PEERS = ("pytorch-autotune", "lightning", "hf-largest")
METHODS = ("grid", "autotune", "random", "tpe", *PEERS)
KNOBS = (
    "batch_size",
    "accumulation_steps",
    "num_workers",
    "prefetch_factor",
    "persistent_workers",
    "precision",
    "channels_last",
    "compile",
    "gradient_checkpointing",
)


class Log:
    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, text: str) -> None:
        with self.path.open("a") as out:
            out.write(text)
        sys.stdout.write(text)
        sys.stdout.flush()

    def flush(self) -> None:
        pass

    def run(self, command: list[str], timeout: float | None = None) -> tuple[float, int]:
        """Run a command, its output into the log; (wall seconds, exit code)."""
        self.write(f"$ {' '.join(command)}\n")
        begin = time.perf_counter()
        with self.path.open("a") as out:
            try:
                code = subprocess.run(
                    command,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                    timeout=timeout,
                    env={**os.environ, "COLUMNS": "160", "PYTHONPATH": str(ROOT)},
                ).returncode
            except subprocess.TimeoutExpired:
                code = 124
        seconds = time.perf_counter() - begin
        self.write(f"  ({seconds:.1f}s, exit {code})\n")
        return seconds, code


def autotune(*args: str) -> list[str]:
    return [sys.executable, "-m", "autotune.cli", *args]


def best_trial(storage: str, study: str | None = None) -> tuple[Any, Any]:
    """(the trial with the best throughput in the workload's unit, the study), as a plain Optuna loop reads it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study or optuna.get_all_study_names(storage)[0]
    loaded = optuna.load_study(study_name=name, storage=storage)
    ok = [t for t in loaded.get_trials(deepcopy=False) if t.user_attrs.get("status") == "ok"]
    best = max(ok, key=lambda t: t.user_attrs.get("unit_per_second") or t.user_attrs["samples_per_second"])
    return best, loaded


def knobs(config: dict[str, Any]) -> dict[str, Any]:
    return {k: config[k] for k in KNOBS if k in config} | (
        {"workload_knobs": config["workload_knobs"]} if config.get("workload_knobs") else {}
    )


def search_method(
    name: str, spec: str, folder: Path, log: Log, trials: int, max_memory: int, extra: list[str]
) -> dict[str, Any]:
    storage = f"sqlite:///{folder / f'{name}.db'}"
    seconds, code = log.run(
        autotune(
            "search",
            "--workload",
            spec,
            "--storage",
            storage,
            "--seed",
            "0",
            "--no-lr-find",
            "--max-memory",
            str(max_memory),
            *extra,
            "--trials",
            str(trials),
        )
    )
    if code != 0:
        return {"method": name, "error": f"autotune search exited {code}", "search_seconds": seconds}
    best, study = best_trial(storage)
    paired = study.user_attrs.get("paired") or {}
    trials_run = len(study.get_trials(deepcopy=False))
    result = {
        "method": name,
        "trial": best.number,
        "trials": trials_run,
        "search_seconds": seconds - (paired.get("seconds") or 0.0),
        "config": knobs(best.user_attrs["config"]),
        "search_figure": best.user_attrs.get("unit_per_second") or best.user_attrs["samples_per_second"],
    }
    if name == "autotune":
        export = folder / "autotune_best.yaml"
        export_seconds, code = log.run(autotune("export-best", "--storage", storage, "--out", str(export)))
        if code != 0:
            return {"method": name, "error": f"autotune export-best exited {code}", "search_seconds": seconds}
        document = yaml.safe_load(export.read_text())
        trial = study.trials[document["provenance"]["trial"]]
        measured = document["measured"]
        result.update(
            trial=trial.number,
            search_seconds=seconds + export_seconds,  # autotune's own re-measurement counts: it is its default
            config=knobs(document["config"]),
            export=str(export),
            storage=storage,
            timed_seconds=len(trial.user_attrs.get("window_samples_per_second") or []) * 1.0,
            search_figure=measured.get("unit_per_second") or measured["samples_per_second"],
            search_samples_per_second=measured["samples_per_second"],
        )
    return result


def peer_method(
    name: str, spec: str, folder: Path, log: Log, max_memory: int, budget: float, start_batch: int
) -> dict[str, Any]:
    out = folder / f"{name}.json"
    seconds, code = log.run(
        [
            sys.executable,
            str(SUITE / "peers.py"),
            name,
            "--workload",
            spec,
            "--max-memory",
            str(max_memory),
            "--budget-seconds",
            str(budget),
            "--start-batch",
            str(start_batch),
            "--out",
            str(out),
        ],
        timeout=budget * 4 + 300,
    )
    document = json.loads(out.read_text()) if out.exists() else {}
    if code != 0 or not document.get("config"):
        return {"method": name, "error": document.get("error") or f"exit {code}", "search_seconds": seconds}
    return {
        "method": name,
        "search_seconds": seconds,
        "config": knobs(document["config"]),
        "own_seconds": document.get("search_seconds"),
        "notes": document.get("notes", []),
    }


def fidelity(
    spec: str, pick: dict[str, Any], folder: Path, log: Log, rounds: int, long_seconds: float | None = None
) -> dict[str, Any]:
    """autotune's pick: its short trial (the search's own harness and settings, run again) and a run
    10x as long (`autotune train`; ``long_seconds`` of training), interleaved over rounds so that a
    shared machine's drift hits both alike; and the figure the search stated (the export's) against
    the long runs."""
    import statistics

    long_seconds = long_seconds or 10 * max(pick.get("timed_seconds") or 3.0, 3.0)
    config = pick["config"]
    effective = config["batch_size"] * config.get("accumulation_steps", 1)
    steps = max(20, int(long_seconds * pick["search_samples_per_second"] / effective))
    study = yaml.safe_load(Path(pick["export"]).read_text())["provenance"]["study"]
    shorts: list[dict[str, Any]] = []
    longs: list[dict[str, Any]] = []
    for index in range(rounds):
        for kind in ("short", "long") if index % 2 == 0 else ("long", "short"):
            out = folder / f"fidelity-{kind}-{index}.json"
            if kind == "short":
                _, code = log.run(
                    [
                        sys.executable,
                        str(SUITE / "short_trial.py"),
                        "--storage",
                        pick["storage"],
                        "--study",
                        study,
                        "--config",
                        pick["export"],
                        "--out",
                        str(out),
                    ]
                )
            else:
                _, code = log.run(
                    autotune(
                        "train",
                        "--workload",
                        spec,
                        "--config",
                        pick["export"],
                        "--steps",
                        str(steps),
                        "--storage",
                        pick["storage"],
                        "--checkpoint-dir",
                        str(folder / f"checkpoints-{index}"),
                        "--out",
                        str(out),
                    )
                )
            if code != 0:
                what = "short_trial.py" if kind == "short" else "autotune train"
                return {"error": f"{what} exited {code} in round {index + 1}"}
            (shorts if kind == "short" else longs).append(json.loads(out.read_text()))
    short = [run["samples_per_second"] for run in shorts]
    long = [run["samples_per_second"] for run in longs]
    stated = pick["search_samples_per_second"]
    # Ratios round by round: a round's short and long runs are neighbours, so drift cancels.
    long_over_short = [b / a for a, b in zip(short, long, strict=True)]
    return {
        "rounds": rounds,
        "steps": steps,
        "trial_timed_seconds": pick.get("timed_seconds"),
        "stated_samples_per_second": stated,
        "short_samples_per_second": short,
        "long_samples_per_second": long,
        "long_over_short": statistics.median(long_over_short),
        "long_over_short_rounds": long_over_short,
        "long_over_stated": statistics.median(long) / stated,
        "long_over_stated_rounds": [b / stated for b in long],
        "projected_seconds": [run["projected_seconds"] for run in longs],
        "actual_seconds": [run["seconds"] for run in longs],
        "actual_over_projected": statistics.median(run["time_ratio"] for run in longs),
        "actual_over_projected_rounds": [run["time_ratio"] for run in longs],
    }


def one_workload(name: str, spec: str, args: argparse.Namespace, folder: Path, log: Log) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from autotune.workload import load_workload

    baseline = dict(load_workload(spec).baseline)
    picks: dict[str, dict[str, Any]] = {}
    log.write(f"\n== {name} ({spec})\n")
    picks["grid"] = search_method(
        "grid",
        spec,
        folder,
        log,
        1000,
        args.max_memory,
        [
            "--space",
            str(SUITE / "spaces" / f"{name}.yaml"),
            "--sampler",
            "grid",
            "--no-pruning",
            "--objective",
            "throughput",
        ],
    )
    picks["autotune"] = search_method("autotune", spec, folder, log, args.trials, args.max_memory, [])
    for sampler in ("random", "tpe"):
        picks[sampler] = search_method(
            sampler,
            spec,
            folder,
            log,
            args.trials,
            args.max_memory,
            ["--sampler", sampler, "--no-pruning", "--objective", "throughput"],
        )
    for peer in PEERS:
        picks[peer] = peer_method(peer, spec, folder, log, args.max_memory, args.peer_budget, START_BATCH[name])
    # The baseline as the search ran it: the workload's knobs on the space's defaults.
    grid_baseline = best_trial(f"sqlite:///{folder / 'grid.db'}")[1]
    base_trial = next(t for t in grid_baseline.get_trials(deepcopy=False) if t.user_attrs.get("baseline"))
    picks["baseline"] = {"method": "baseline", "config": knobs(base_trial.user_attrs["config"]), "search_seconds": 0.0}

    # One independent measurement of every distinct pick, interleaved.
    distinct: list[dict[str, Any]] = []
    for method, pick in picks.items():
        if "config" not in pick:
            continue
        same = next((d for d in distinct if d["config"] == pick["config"]), None)
        if same:
            same["methods"].append(method)
        else:
            distinct.append({"label": method, "methods": [method], "config": pick["config"]})
    log.write(f"-- independent measurement: {len(distinct)} distinct configs x {args.rounds} rounds\n")
    measured = independent.measure(spec, distinct, args.rounds, args.seconds, args.warmup_steps, 600, log)
    for entry in measured:
        for method in entry["methods"]:
            picks[method]["measured"] = {
                key: entry.get(key) for key in ("units_per_second", "samples_per_second", "error", "peak_rss_bytes")
            }
    result = {"name": name, "spec": spec, "baseline_knobs": baseline, "picks": picks}
    if "export" in picks["autotune"]:
        log.write("-- fidelity of autotune's pick\n")
        result["fidelity"] = fidelity(spec, picks["autotune"], folder, log, args.fidelity_rounds)
    return result


def rate(pick: dict[str, Any]) -> float | None:
    figure = (pick.get("measured") or {}).get("units_per_second")
    return figure["median"] if figure else None


def round_ratios(pick: dict[str, Any], other: dict[str, Any]) -> list[float]:
    """``pick``'s throughput over ``other``'s, round by round: the two ran in the same interleaved
    round, so the machine's drift between rounds cancels out of each ratio."""
    mine, theirs = ((p.get("measured") or {}).get("units_per_second") or {} for p in (pick, other))
    return [a / b for a, b in zip(mine.get("rounds") or [], theirs.get("rounds") or [], strict=False) if a and b]


def goals(result: dict[str, Any]) -> dict[str, Any]:
    picks = result["picks"]
    ours, oracle, base = rate(picks["autotune"]), rate(picks["grid"]), rate(picks["baseline"])
    peers = {p: rate(picks[p]) for p in PEERS}
    return {
        "of_oracle": ours / oracle if ours and oracle else None,
        "of_oracle_rounds": round_ratios(picks["autotune"], picks["grid"]),
        "cost_of_grid": (
            picks["autotune"]["search_seconds"] / picks["grid"]["search_seconds"]
            if picks["grid"].get("search_seconds")
            else None
        ),
        "over_baseline": ours / base if ours and base else None,
        "over_baseline_rounds": round_ratios(picks["autotune"], picks["baseline"]),
        "over_peers": {p: ours / r if ours and r else None for p, r in peers.items()},
        "over_peers_rounds": {p: round_ratios(picks["autotune"], picks[p]) for p in peers},
        # A peer's pick that did not train through the independent measurement, where autotune's did.
        "peers_failed": {
            p: (picks[p].get("measured") or {}).get("error")
            for p, r in peers.items()
            if ours and not r and (picks[p].get("measured") or {}).get("error")
        },
    }


def verdict(low: float, high: float, at_least: float | None = None, at_most: float | None = None) -> str:
    """Met when every round's ratio meets the goal, not met when none does, else not resolved at
    the machine's noise (the rounds' ratios fall on both sides of it). With 5 rounds the range of
    their ratios holds the true median with 94% probability (1 - 2 x 0.5^5)."""

    def meets(value: float) -> bool:
        return (at_least is None or value >= at_least) and (at_most is None or value <= at_most)

    if meets(low) and meets(high):
        return "met"
    low_side = at_least is not None and high < at_least
    high_side = at_most is not None and low > at_most
    if low_side or high_side:
        return "not met"
    return f"not resolved: the rounds span {low:.3f} to {high:.3f}"


def describe(config: dict[str, Any]) -> str:
    parts = [f"bs {config['batch_size']}"]
    if config.get("accumulation_steps", 1) != 1:
        parts[0] += f"x{config['accumulation_steps']}"
    parts.append(f"w{config.get('num_workers', 0)}")
    parts.append(config.get("precision", "fp32"))
    if config.get("channels_last"):
        parts.append("CL")
    if config.get("compile", "off") != "off":
        parts.append(f"compile {config['compile']}")
    if config.get("gradient_checkpointing"):
        parts.append("ckpt")
    return " · ".join(parts)


def machine() -> str:
    import optuna
    import torch

    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else ""
    )
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    return (
        f"{os.cpu_count()} CPU cores ({cpu}), {memory:.0f} GiB, no GPU; {platform.platform()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, optuna {optuna.__version__}"
    )


def render(results: list[dict[str, Any]], args: argparse.Namespace, started: str, seconds: float) -> str:
    lines = [
        f"# Benchmark suite, {started}",
        "",
        f"Machine: {machine()}. Run: `{' '.join(['python benchmarks/suite/run.py', *sys.argv[1:]])}` "
        f"({seconds / 60:.0f} minutes; "
        f"trial budget {args.trials} for autotune, random and tpe; every method's memory budget "
        f"{args.max_memory / 1024**3:.1f} GiB; independent measurement: {args.rounds} interleaved rounds of "
        f"{args.seconds:g} s per config, each a fresh process).",
        "",
        "Throughput is the independent script's median over rounds, in the workload's unit, ± half the range "
        "over rounds. Search cost is wall time, process starts included; grid, random and tpe leave out the "
        "side-by-side re-measurement `autotune search` adds at its end (a hand-written loop would not run it).",
        "",
        "A goal on throughput is judged round by round (two picks' ratio within one interleaved round, so the "
        "machine's drift between rounds cancels): met when every round meets it, not met when none does, and "
        "otherwise not resolved at this machine's noise, with the rounds' range.",
        "",
    ]
    for result in results:
        picks, check = result["picks"], goals(result)
        oracle = rate(picks["grid"])
        lines += [
            f"## {result['name']} (`{result['spec']}`)",
            "",
            "| method | pick | throughput | of oracle | search cost | search's own figure |",
            "|---|---|---|---|---|---|",
        ]
        for method in (*METHODS, "baseline"):
            pick = picks.get(method) or {}
            if "config" not in pick:
                lines.append(f"| {method} | error: {pick.get('error')} | | | {pick.get('search_seconds', 0):.0f} s | |")
                continue
            figure = (pick.get("measured") or {}).get("units_per_second")
            shown = (
                f"{figure['median']:.1f} ± {figure['spread']:.1%}"
                if figure
                else f"not measured: {(pick.get('measured') or {}).get('error')}"
            )
            of_oracle = f"{figure['median'] / oracle:.3f}" if figure and oracle else ""
            cost = f"{pick['search_seconds']:.0f} s" if method != "baseline" else "-"
            if method in ("grid", "random", "tpe", "autotune"):
                cost += f" ({pick['trials']} trials)"
            own = f"{pick['search_figure']:.1f}" if pick.get("search_figure") else ""
            lines.append(f"| {method} | {describe(pick['config'])} | {shown} | {of_oracle} | {cost} | {own} |")
        unit = "units"
        lines += ["", f"Goals for autotune's pick ({unit} per second as measured above):", ""]
        lines.append(
            _goal("at least 0.97 of the oracle's throughput", check["of_oracle"], 0.97, check["of_oracle_rounds"])
        )
        lines.append(_goal("at most 15% of the grid's search time", check["cost_of_grid"], 0.15, at_most=True))
        lines.append(_goal("never below the baseline", check["over_baseline"], 1.0, check["over_baseline_rounds"]))
        for peer, ratio in check["over_peers"].items():
            if peer in check["peers_failed"]:
                lines.append(
                    f"- at least as fast as {peer}'s pick: met (its pick failed to train in the independent "
                    f"measurement, autotune's trained: {check['peers_failed'][peer]})"
                )
                continue
            lines.append(_goal(f"at least as fast as {peer}'s pick", ratio, 1.0, check["over_peers_rounds"][peer]))
        fid = result.get("fidelity")
        if fid and "error" not in fid:

            def within(ratios: list[float]) -> str:
                return verdict(min(ratios), max(ratios), at_least=0.95, at_most=1.05)

            def listed(values: list[float]) -> str:
                return ", ".join(f"{value:.1f}" for value in values)

            lines += [
                "",
                f"Fidelity of autotune's pick ({fid['rounds']} rounds, short and long interleaved):",
                "",
                f"- its short trial (the search's harness and settings, run again) against a run 10x as long "
                f"({fid['steps']} steps of `autotune train`): long {listed(fid['long_samples_per_second'])}, "
                f"short {listed(fid['short_samples_per_second'])} samples/s; long over short, round by round, "
                f"median {fid['long_over_short']:.3f} (goal: within 5%: {within(fid['long_over_short_rounds'])})",
                f"- the figure the search stated (the export's, {fid['stated_samples_per_second']:.1f} samples/s) "
                f"against the long runs: {fid['long_over_stated']:.3f} (goal: within 5%: "
                f"{within(fid['long_over_stated_rounds'])})",
                f"- projected against actual wall time of the long runs: actual {listed(fid['actual_seconds'])} s, "
                f"projected {listed(fid['projected_seconds'])} s; median ratio {fid['actual_over_projected']:.3f} "
                f"(goal: within 5%: {within(fid['actual_over_projected_rounds'])})",
            ]
        elif fid:
            lines += ["", f"Fidelity of autotune's pick: {fid['error']}"]
        notes = [f"- {method}: {note}" for method in PEERS for note in (picks.get(method) or {}).get("notes", [])]
        if notes:
            lines += ["", "Peers' notes:", "", *notes]
        lines.append("")
    return "\n".join(lines)


def _goal(
    what: str, value: float | None, target: float, rounds: list[float] | None = None, *, at_most: bool = False
) -> str:
    """A goal's line: ``value`` (a ratio of medians) and, with the ratios round by round, a verdict
    that says when the machine's noise leaves it open."""
    if value is None:
        return f"- {what}: not measured"
    if rounds and len(rounds) > 1:
        low, high = min(rounds), max(rounds)
    else:
        low = high = value
    bound = {"at_most": target} if at_most else {"at_least": target}
    return f"- {what}: {value:.3f} ({verdict(low, high, **bound)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    parser.add_argument("--trials", type=int, default=10, help="trial budget of autotune, random and tpe")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the independent measurement")
    parser.add_argument(
        "--seconds", type=float, default=3.0, help="timed seconds per run of the independent measurement"
    )
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument(
        "--fidelity-rounds", type=int, default=5, help="rounds of autotune's short trial against a run 10x as long"
    )
    parser.add_argument(
        "--max-memory",
        type=int,
        default=2 * 1024**3,
        help="every method's memory budget of one training process, bytes",
    )
    parser.add_argument("--peer-budget", type=float, default=90.0, help="pytorch-autotune's budget, seconds")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--work", type=Path, default=None, help="studies and run files (default: a temporary folder)")
    args = parser.parse_args()
    started = datetime.date.today().isoformat()
    folder = args.work or Path(tempfile.mkdtemp(prefix="autotune-suite-"))
    args.out.mkdir(parents=True, exist_ok=True)
    log = Log(args.out / f"suite-{started}.log")
    log.path.write_text("")
    begin = time.perf_counter()
    results = []
    for name in args.workloads.split(","):
        results.append(one_workload(name, WORKLOADS[name], args, folder / name, log))
        (args.out / f"suite-{started}.json").write_text(json.dumps(results, indent=1, default=str))
    text = render(results, args, started, time.perf_counter() - begin)
    (args.out / f"suite-{started}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
