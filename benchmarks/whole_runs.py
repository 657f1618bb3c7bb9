"""Whole runs: does the exported config reach the recipe's model sooner?

For each workload: ``autotune search`` (by default with ``--effective-batch free``, so a larger batch
can be tried and must earn its place by progress), ``autotune export-best``, then the baseline's
recipe and the export each trained in full with ``autotune train``, over several seeds. Reports
each run's final training loss (mean of its last 20 steps), its held-out loss where the workload
evaluates, its wall time (the training loop plus building the model and data), and the time at
which its training loss first reaches the recipe's final loss (mean over the recipe's seeds);
draws loss against wall time for both, every seed.

    python benchmarks/whole_runs.py                      # demo, text, causal_lm; 3 seeds; 3-minute searches
    python benchmarks/whole_runs.py --workloads causal_lm --seeds 1 --timeout 90s

Writes ``benchmarks/results/whole-runs-<date>.md``, ``.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

# name: (workload spec, the recipe's length for these runs, what it is)
WORKLOADS = {
    "demo": ("autotune.workload.demo:workload", None, "the built-in demo: a small CNN, batch 8, AdamW 1e-3, 5 epochs"),
    # A quarter epoch of the text example (10,000 listings): its 3-epoch recipe takes about half an hour here.
    "text": (
        str(ROOT / "examples" / "text.py") + ":workload",
        0.25,
        "examples/text.py: DeBERTa-v2 regression, 16 x 4 accumulation, AdamW 5e-5, a quarter epoch",
    ),
    "causal_lm": (
        str(ROOT / "benchmarks" / "workloads" / "causal_lm.py") + ":workload",
        None,
        "benchmarks/workloads/causal_lm.py: a GPT of nanoGPT's CPU recipe, batch 12, AdamW 1e-3, 2000 steps",
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="comma-separated: " + ", ".join(WORKLOADS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--timeout", default="3m", help="each search's --timeout")
    parser.add_argument("--effective-batch", default="free", help="each search's --effective-batch ('' for none)")
    parser.add_argument("--out", default=None, help="results path without suffix (default: results/whole-runs-<date>)")
    parser.add_argument(
        "--from-json",
        default=None,
        metavar="FILE",
        help="write the report and figure again from an earlier run's JSON, running nothing",
    )
    args = parser.parse_args()
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        for result in results["workloads"].values():
            _score(result)
        _write(Path(args.from_json).with_suffix(""), results, time.monotonic() - results["seconds"])
        return
    stem = Path(args.out) if args.out else RESULTS / f"whole-runs-{datetime.date.today().isoformat()}"
    names = [name.strip() for name in args.workloads.split(",") if name.strip()]
    folder = Path(tempfile.mkdtemp(prefix="whole-runs-"))
    started = time.monotonic()
    results = {"machine": _machine(), "arguments": vars(args), "workloads": {}}
    try:
        for name in names:
            results["workloads"][name] = run_workload(name, folder / name, args)
            _write(stem, results, started)  # after each workload: an interrupted run keeps what it measured
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"wrote {stem}.md, .json and .png")


def run_workload(name: str, folder: Path, args: argparse.Namespace) -> dict:
    spec, epochs, what = WORKLOADS[name]
    folder.mkdir(parents=True)
    storage = f"sqlite:///{folder / 'study.db'}"
    search = [
        "search",
        "--workload",
        spec,
        "--study",
        name,
        "--storage",
        storage,
        "--timeout",
        args.timeout,
        "--trials",
        "1000",
        "--seed",
        "0",
    ]
    search += ["--effective-batch", args.effective_batch] if args.effective_batch else []
    search += ["--epochs", str(epochs)] if epochs is not None else []
    began = time.monotonic()
    search_log = _autotune(search)
    search_seconds = time.monotonic() - began
    export = folder / "best.yaml"
    export_log = _autotune(["export-best", "--study", name, "--storage", storage, "--out", str(export)])
    document = yaml.safe_load(export.read_text())
    recipe = _recipe_file(folder, storage, name, document)
    runs: dict[str, list[dict]] = {"recipe": [], "export": []}
    for seed in range(args.seeds):
        for side, config in (("recipe", recipe), ("export", export)):  # interleaved: drift hits both alike
            runs[side].append(_train(folder / f"{side}-{seed}", spec, config, seed))
    return _score(
        {
            "workload": spec,
            "what": what,
            "search_seconds": search_seconds,
            "search_tail": search_log.splitlines()[-12:],
            "export_lines": export_log.splitlines(),
            "recipe_config": yaml.safe_load(recipe.read_text())["config"],
            "export_config": document["config"],
            "progress": document.get("progress"),
            "payoff": document.get("payoff"),
            "runs": runs,
        }
    )


def _score(result: dict) -> dict:
    """The recipe's final loss (mean over its seeds) and when each run reaches it."""
    result["recipe_final_loss"] = statistics.fmean(run["final_loss"] for run in result["runs"]["recipe"])
    # Where the recipe's smoothed curves end, so that a recipe run of the mean reaches it at its end.
    target = statistics.fmean(_smoothed(run["curve"])[-1] for run in result["runs"]["recipe"])
    result["recipe_smoothed_final_loss"] = target
    for side in result["runs"].values():
        for run in side:
            run["reaches_recipe_loss_seconds"] = _reaches(run["curve"], target)
    return result


def _autotune(arguments: list[str]) -> str:
    command = [sys.executable, "-m", "autotune.cli", *arguments]
    print("$ autotune " + " ".join(arguments), flush=True)
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    print(done.stdout[-3000:], flush=True)
    if done.returncode != 0:
        raise SystemExit(f"autotune {arguments[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def _recipe_file(folder: Path, storage: str, name: str, document: dict) -> Path:
    """The baseline's recipe as autotune train takes it: its config at base_lr, for the recipe's epochs."""
    import optuna

    study = optuna.load_study(study_name=name, storage=storage)
    path = folder / "recipe.yaml"
    full_run = {"epochs": document["full_run"]["recipe_epochs"]}
    path.write_text(yaml.safe_dump({"config": study.user_attrs["baseline"], "full_run": full_run}, sort_keys=False))
    return path


def _train(folder: Path, spec: str, config: Path, seed: int) -> dict:
    record_path = folder / "record.json"
    arguments = [
        "train",
        "--config",
        str(config),
        "--workload",
        spec,
        "--seed",
        str(seed),
        "--checkpoint-every",
        "off",
        "--checkpoint-dir",
        str(folder / "checkpoints"),
        "--out",
        str(record_path),
        "--no-write-back",
    ]
    began = time.monotonic()
    _autotune(arguments)
    process_seconds = time.monotonic() - began
    record = json.loads(record_path.read_text())
    evaluation = record["evaluations"][-1]["metrics"] if record["evaluations"] else {}
    return {
        "seed": seed,
        "steps": record["steps"],
        "effective_batch": record["effective_batch_size"],
        "epochs": record["epochs"],
        "final_loss": record["final_loss"],
        "held_out_loss": evaluation.get("loss"),
        "wall_seconds": record["seconds"] + record["setup_seconds"],
        "training_seconds": record["seconds"],
        "process_seconds": process_seconds,
        "curve": record["curve"],
    }


def _smoothed(curve: list[dict]) -> list[float]:
    """The loss curve as a trailing mean over a twentieth of its points."""
    window = max(1, len(curve) // 20)
    return [statistics.fmean(p["loss"] for p in curve[max(0, i - window + 1) : i + 1]) for i in range(len(curve))]


def _reaches(curve: list[dict], target: float) -> float | None:
    """The training time from which the smoothed loss curve stays at or below ``target`` to the end; None
    when it does not end there. A noisy curve that dips below the target early has not reached it."""
    reached = None
    for point, loss in zip(curve, _smoothed(curve), strict=True):
        if loss > target:
            reached = None
        elif reached is None:
            reached = point["seconds"]
    return reached


def _machine() -> dict:
    import torch

    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _write(stem: Path, results: dict, started: float) -> None:
    results["seconds"] = time.monotonic() - started
    stem.parent.mkdir(parents=True, exist_ok=True)
    _figure(results, stem.with_suffix(".png"))
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    stem.with_suffix(".md").write_text(_markdown(results))


def _summary(runs: list[dict], key: str) -> str:
    values = [run[key] for run in runs if run[key] is not None]
    if not values:
        return "-"
    if len(values) < len(runs):
        return f"{statistics.fmean(values):.4g} ({len(values)} of {len(runs)})"
    spread = f" ± {statistics.stdev(values):.2g}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.4g}{spread}"


def _markdown(results: dict) -> str:
    machine = results["machine"]
    lines = [
        f"# Whole runs, {datetime.date.today().isoformat()}",
        "",
        f"{machine['cpus']} CPUs ({machine['processor']}), torch {machine['torch']}, Python {machine['python']}; "
        f"searches with `--timeout {results['arguments']['timeout']}` and `--effective-batch "
        f"{results['arguments']['effective_batch'] or '(the recipe)'}`; {results['arguments']['seeds']} seeds per "
        f"side; {results['seconds'] / 60:.0f} minutes in all.",
        "",
        "Each side trained in full with `autotune train` (interleaved by seed). Loss: the mean training loss of the "
        "last 20 steps; held-out: the workload's evaluate at the end, where it has one. Wall time: the training loop "
        'plus building the model and data. "Reaches": the training time from which the run\'s loss curve (a '
        "trailing mean over a twentieth of its points) stays at or below where the recipe's smoothed curves end (the "
        'mean over its seeds) to the end; "(k of n)": only k of the n seeds\' runs end there.',
        "",
        "| workload | side | effective batch | steps | final loss | held-out loss | wall time (s) | reaches the "
        "recipe's loss (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, result in results["workloads"].items():
        for side in ("recipe", "export"):
            runs = result["runs"][side]
            lines.append(
                f"| {name} | {side} | {runs[0]['effective_batch']} | {runs[0]['steps']} "
                f"| {_summary(runs, 'final_loss')} "
                f"| {_summary(runs, 'held_out_loss')} | {_summary(runs, 'wall_seconds')} "
                f"| {_summary(runs, 'reaches_recipe_loss_seconds')} |"
            )
    for name, result in results["workloads"].items():
        lines += [
            "",
            f"## {name}",
            "",
            result["what"] + ".",
            "",
            f"Search: {result['search_seconds']:.0f} s. The export's lines:",
            "",
        ]
        lines += [f"- {line}" for line in result["export_lines"]]
    lines += ["", "![loss against wall time](" + Path(results.get("figure", "")).name + ")", ""]
    return "\n".join(lines)


def _figure(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["workloads"])
    figure, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), dpi=110, squeeze=False)
    for axis, name in zip(axes[0], names, strict=False):
        result = results["workloads"][name]
        for side, colour in (("recipe", "C0"), ("export", "C3")):
            for index, run in enumerate(result["runs"][side]):
                curve = run["curve"]
                axis.plot(
                    [p["seconds"] for p in curve],
                    [p["loss"] for p in curve],
                    color=colour,
                    alpha=0.7,
                    linewidth=1.2,
                    label=f"{side} (batch {run['effective_batch']})" if index == 0 else None,
                )
        axis.axhline(
            result["recipe_final_loss"],
            color="0.4",
            linestyle=":",
            linewidth=1,
            label="recipe's final loss (last 20 steps)",
        )
        axis.set_yscale("log")
        axis.set_xlabel("training wall time (s)")
        axis.set_ylabel("training loss")
        axis.set_title(name)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    results["figure"] = str(path)


if __name__ == "__main__":
    main()
