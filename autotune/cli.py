"""The ``autotune`` command: parse options, call one library function, print the result."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

from autotune.exceptions import AutotuneError, ParameterError, Terminated

storage_option = click.option(
    "--storage",
    metavar="URL",
    default=None,
    help="Study storage (SQLAlchemy URL). Default: sqlite:///studies/autotune.db. "
    "Share one PostgreSQL URL to run several autotune processes on one study.",
)
study_option = click.option(
    "--study", "study_name", metavar="NAME", default=None, help="Study name. Default: derived from the workload."
)


# The library's parameters whose option is not named after them ("--" + the name, dashed).
_OPTION_OF = {
    "n_trials": "--trials",
    "timeout_seconds": "--timeout",
    "trial_timeout_seconds": "--trial-timeout",
    "max_memory_bytes": "--max-memory",
    "memory_budget_bytes": "--max-memory",
    "deadline_seconds": "--deadline",
    "safety_margin_seconds": "--safety-margin",
}


def _reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """AutotuneError -> 'Error: ...' and exit 1 (a parameter named as its option). Ctrl-C -> exit 130,
    SIGTERM -> exit 143. Anything else is a bug and keeps its traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ParameterError as exc:
            options = {name: _OPTION_OF.get(name, "--" + name.replace("_", "-")) for name in exc.parameters}
            raise click.ClickException(exc.renamed(options)) from None
        except AutotuneError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated)
            hint = (
                "; finished trials are kept in the study: run the same command to resume"
                if command.__name__ == "search"
                else ""
            )
            click.echo(f"{'Terminated' if terminated else 'Interrupted'}{hint}.", err=True)
            sys.exit(143 if terminated else 130)  # 128 + the signal's number, as a shell reports it

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autotune")
def main() -> None:
    """Find the fastest way to train a PyTorch model on this machine, by measurement.

    autotune runs short, measured trials of your own training step in fresh processes,
    searches batch size, DataLoader workers, precision, channels_last, torch.compile and
    more with Optuna, and exports the fastest config that fits your memory budget.
    """


@main.command(
    epilog="""\b
Examples:
  autotune search                                   # tune the built-in demo on this machine
  autotune search --workload train.py:workload --trials 30 --timeout 20m
  autotune search --workload mypkg.train:workload --max-memory 24GiB --space my_space.yaml
  autotune search --storage postgresql://user@db/autotune --study resnet50   # one of many workers
  autotune search --workload train.py:workload --effective-batch 256 --deadline 12h --safety-margin 30m
  autotune search --workload train.py:workload --effective-batch free --timeout 10m   # a larger batch must earn it
"""
)
@click.option(
    "--workload",
    "workload_spec",
    metavar="FILE.py:NAME|MODULE:NAME",
    default=None,
    help="Your training job (a Workload or a function returning one). Default: the built-in demo.",
)
@study_option
@storage_option
@click.option("--space", metavar="FILE.yaml", default=None, help="Search space. Default: the shipped default.yaml.")
@click.option("--trials", "n_trials", type=int, default=20, show_default=True, help="Trials to run in this invocation.")
@click.option("--timeout", metavar="DURATION", default=None, help="Budget for the whole search, e.g. 90s, 10m, 2h.")
@click.option(
    "--trial-timeout",
    metavar="DURATION",
    default=None,
    help="A trial with no result by then is stopped (status timeout). "
    "Default: 3x a trial's share of --timeout (at least 30s), else 10m.",
)
@click.option(
    "--max-memory",
    metavar="SIZE",
    default=None,
    help="Memory budget of one trial, e.g. 640MiB, 24GiB (device memory on CUDA, resident memory on CPU). "
    "Default: the CUDA device's memory, or the machine's available memory.",
)
@click.option(
    "--memory-headroom",
    metavar="FRACTION",
    default="10%",
    show_default=True,
    help="Feasible only below (1 - headroom) x --max-memory; 10% or 0.1.",
)
@click.option(
    "--effective-batch",
    metavar="N|free",
    default=None,
    help="Samples per optimizer step (batch_size x accumulation_steps) every trial keeps; "
    "accumulation_steps is derived. Default: the recipe's (the baseline's, or the workload's "
    "effective_batch). 'free': any, each ranked by the time to the recipe's progress (gradient noise "
    "scale), a changed one exported only once checked against the recipe.",
)
@click.option("--epochs", type=float, default=None, help="Epochs of the full run. Default: the workload's.")
@click.option("--steps", type=int, default=None, help="The full run in optimizer steps, instead of epochs.")
@click.option(
    "--objective",
    type=click.Choice(["time", "throughput"]),
    default="time",
    show_default=True,
    help="time: rank by the full run's projected wall time (compile, warm-up and evaluation included); "
    "throughput: by steady throughput in the workload's unit.",
)
@click.option(
    "--deadline",
    metavar="DURATION",
    default=None,
    help="The full run must finish within this (e.g. 12h); configs projected past it are infeasible.",
)
@click.option(
    "--safety-margin", metavar="DURATION", default=None, help="Kept free inside --deadline (e.g. 30m). Default: none."
)
@click.option(
    "--slow-fraction",
    type=float,
    default=0.5,
    show_default=True,
    help="Prune a trial whose first window is below this fraction of the best trial's throughput.",
)
@click.option(
    "--lr-find/--no-lr-find",
    default=True,
    show_default=True,
    help="After the speed search, run the LR range test on the best config.",
)
@click.option(
    "--lr-scaling",
    type=click.Choice(["auto", "adascale", "linear", "sqrt", "none"]),
    default="auto",
    show_default=True,
    help="How max_lr follows a changed effective batch (and where the range test starts): AdaScale's "
    "gain at the gradient noise scale, linear, square root or none; auto: sqrt for Adam-like optimizers, "
    "adascale for SGD-like ones.",
)
@click.option(
    "--divergence-factor",
    type=float,
    default=4.0,
    show_default=True,
    help="A trial whose loss rises above this times its first value ends as diverged.",
)
@click.option(
    "--sampler",
    type=click.Choice(["tpe", "random", "grid"]),
    default="tpe",
    show_default=True,
    help="tpe: Optuna's TPE; random: uniform; grid: every config of the space once (each searched "
    "knob a list of choices).",
)
@click.option(
    "--pruning/--no-pruning",
    default=True,
    show_default=True,
    help="--no-pruning measures every trial in full: no median or --slow-fraction pruning, no batch "
    "skipped on a fitted curve's prediction.",
)
@click.option("--seed", type=int, default=None, help="Seed of the sampler and of each trial.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--warmup-steps",
    type=int,
    default=1,
    show_default=True,
    help="Untimed optimizer steps before the windows (worker start, lazy init); torch.compile trials take one more.",
)
@click.option(
    "--windows", type=int, default=3, show_default=True, help="Timed windows per trial, at least (median is reported)."
)
@click.option(
    "--max-windows",
    type=int,
    default=None,
    help="Windows a trial may go on to while its spread is too large to rank it against the best "
    "(default: twice --windows; equal to --windows: a fixed count).",
)
@click.option(
    "--target-spread",
    type=float,
    default=0.02,
    show_default=True,
    help="Relative standard error of the windows' throughput at which a trial stops measuring.",
)
@click.option("--window-seconds", type=float, default=1.0, show_default=True, help="Length of one timed window.")
@_reports_errors
def search(
    workload_spec: str | None,
    study_name: str | None,
    storage: str | None,
    space: str | None,
    n_trials: int,
    timeout: str | None,
    trial_timeout: str | None,
    max_memory: str | None,
    memory_headroom: str,
    effective_batch: str | None,
    epochs: float | None,
    steps: int | None,
    objective: str,
    deadline: str | None,
    safety_margin: str | None,
    slow_fraction: float,
    lr_find: bool,
    lr_scaling: str,
    divergence_factor: float,
    sampler: str,
    pruning: bool,
    seed: int | None,
    device: str,
    warmup_steps: int,
    windows: int,
    max_windows: int | None,
    target_spread: float,
    window_seconds: float,
) -> None:
    """Tune a workload: measure its baseline, then search the speed knobs."""
    from autotune.knobs._units import parse_duration, parse_fraction, parse_size
    from autotune.report._console import SearchPrinter, print_search_result
    from autotune.runner import MeasureSettings
    from autotune.study._loop import search as run_search
    from autotune.study._options import SearchOptions
    from autotune.workload._workload import DEMO_SPEC

    options = SearchOptions(
        workload=workload_spec or DEMO_SPEC,
        study_name=study_name,
        storage=storage,
        space=space,
        n_trials=n_trials,
        timeout_seconds=parse_duration(timeout, what="--timeout") if timeout else None,
        trial_timeout_seconds=parse_duration(trial_timeout, what="--trial-timeout") if trial_timeout else None,
        max_memory_bytes=parse_size(max_memory, what="--max-memory") if max_memory else None,
        memory_headroom=parse_fraction(memory_headroom, what="--memory-headroom"),
        effective_batch=_effective_batch(effective_batch),
        epochs=epochs,
        steps=steps,
        objective=objective,  # type: ignore[arg-type]
        deadline_seconds=parse_duration(deadline, what="--deadline") if deadline else None,
        safety_margin_seconds=parse_duration(safety_margin, what="--safety-margin", allow_zero=True)
        if safety_margin
        else 0.0,
        slow_fraction=slow_fraction,
        lr_find=lr_find,
        lr_scaling=lr_scaling,
        seed=seed,
        sampler=sampler,  # type: ignore[arg-type]
        pruning=pruning,
        device=device,
        measure=MeasureSettings(
            warmup_steps=warmup_steps,
            windows=windows,
            window_seconds=window_seconds,
            seed=seed or 0,
            divergence_factor=divergence_factor,
            max_windows=max_windows if max_windows is not None else 2 * windows,
            target_spread=target_spread,
        ),
    )
    printer = SearchPrinter(options.n_trials, options.timeout_seconds)
    try:
        result = run_search(options, printer)
    finally:
        printer.close()
    print_search_result(result)


def _effective_batch(text: str | None) -> int | str | None:
    if text is None or text.strip().lower() == "free":
        return None if text is None else "free"
    try:
        return int(text)
    except ValueError:
        raise click.BadParameter(
            f"expected an integer or 'free', got {text!r}", param_hint="--effective-batch"
        ) from None


@main.command(
    "export-best",
    epilog="""\b
Examples:
  autotune export-best                              # the only study in the default storage
  autotune export-best --study demo --out best.yaml
  autotune export-best --study resnet50 --storage postgresql://user@db/autotune --format json --out best.json
  autotune export-best --verify 3 --rounds 3        # re-measure the top 3 and the baseline first
  autotune export-best --prefer memory              # the leanest config within 5% of the fastest
  autotune export-best --format hf                  # TrainingArguments keyword arguments in best_hf.yaml
  autotune export-best --format torch --out train.py   # a script that runs the full job
""",
)
@study_option
@storage_option
@click.option(
    "--out",
    metavar="FILE",
    default=None,
    help="Where to write the config. Default: best.yaml; best_hf.yaml, best_lightning.yaml, "
    "best_accelerate.yaml or best_train.py for those formats.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["yaml", "json", "hf", "lightning", "accelerate", "torch"]),
    default=None,
    help="yaml or json: the whole export. hf, lightning, accelerate: keyword arguments for "
    "TrainingArguments, Trainer, Accelerator (YAML; JSON for a .json --out) and code lines; torch: a "
    "Python script (--out must end in .py). Default: from --out's suffix (.json -> json, .py -> torch, "
    "else yaml).",
)
@click.option(
    "--prefer",
    type=click.Choice(["fastest", "balanced", "memory", "recipe"]),
    default="fastest",
    show_default=True,
    help="fastest: highest throughput; memory: least memory within 5% of the fastest; "
    "balanced: the fastest that leaves twice the memory headroom; recipe: the fastest that keeps "
    "the workload knobs marked changes_recipe (sequence length, ...) at the baseline's values.",
)
@click.option(
    "--verify",
    "verify_top",
    type=int,
    default=0,
    show_default=True,
    metavar="K",
    help="Re-measure the top K candidates and the baseline in fresh processes, then choose.",
)
@click.option("--rounds", type=int, default=3, show_default=True, help="Interleaved rounds of --verify.")
@_reports_errors
def export_best(
    study_name: str | None,
    storage: str | None,
    out: str | None,
    fmt: str | None,
    prefer: str,
    verify_top: int,
    rounds: int,
) -> None:
    """Write the best feasible config, its measured figures, its payoff and provenance.

    The baseline is exported unless a config beats it by more than the measured noise.
    """
    from autotune.export._export import default_out
    from autotune.export._export import export_best as run_export
    from autotune.report._console import print_export, print_verify_run

    export = run_export(
        study_name,
        storage,
        out or default_out(fmt),
        fmt,  # type: ignore[arg-type]
        prefer=prefer,
        verify_top=verify_top,
        rounds=rounds,
        on_verify_run=print_verify_run,
    )
    print_export(export)


@main.command(
    "lr-find",
    epilog="""\b
Examples:
  autotune lr-find                                  # the best trial of the storage's only study
  autotune lr-find --study demo --trial 7 --plot lr_find.png
  autotune lr-find --study resnet50 --lr-scaling sqrt --steps 200
""",
)
@study_option
@storage_option
@click.option(
    "--trial",
    "trial_number",
    type=int,
    default=None,
    help="The trial whose config is tested. Default: the fastest feasible trial.",
)
@click.option(
    "--lr-scaling",
    type=click.Choice(["auto", "adascale", "linear", "sqrt", "none"]),
    default="auto",
    show_default=True,
    help="Centre the sweep on base_lr scaled from the recipe's effective batch to the trial's (auto: "
    "sqrt for Adam-like optimizers, AdaScale's gain for SGD-like ones).",
)
@click.option("--steps", type=int, default=100, show_default=True, help="Optimizer steps in the sweep.")
@click.option(
    "--plot",
    metavar="FILE.png",
    default="lr_find.png",
    show_default=True,
    help="Where to draw the curve (loss against LR, log scale, the suggestion marked).",
)
@_reports_errors
def lr_find(
    study_name: str | None, storage: str | None, trial_number: int | None, lr_scaling: str, steps: int, plot: str
) -> None:
    """Run the LR range test on a trial's config and suggest OneCycle's max_lr.

    The curve and the suggestion are stored with the study, and export-best uses them.
    """
    from autotune.report._console import print_lr_find
    from autotune.store._storage import load_study
    from autotune.study._lr_find import lr_find_for_trial
    from autotune.study._lr_find import plot as draw

    if steps < 5:
        raise click.BadParameter(f"must be >= 5, got {steps}", param_hint="--steps")
    result = lr_find_for_trial(
        load_study(study_name, storage),
        trial_number,
        scaling=lr_scaling,  # type: ignore[arg-type]
        steps=steps,
    )
    print_lr_find(result, draw(result, plot))


@main.command(
    epilog="""\b
Examples:
  autotune dashboard                                # the default storage, http://127.0.0.1:8080/
  autotune dashboard --storage postgresql://user@db/autotune --host 0.0.0.0 --port 8081
""",
)
@storage_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8080, show_default=True, help="Port to listen on (0: any free port).")
@_reports_errors
def dashboard(storage: str | None, host: str, port: int) -> None:
    """Serve optuna-dashboard on the study storage; Ctrl-C stops it."""
    from autotune.report._dashboard import serve

    serve(storage, host, port, on_ready=lambda url: click.echo(f"optuna-dashboard at {url} (Ctrl-C to stop)"))
    click.echo("dashboard stopped")


@main.command(
    epilog="""\b
Examples:
  autotune report                                   # the storage's only study
  autotune report --study demo --top 5 --plots plots/
  autotune report --study demo --json > report.json
""",
)
@study_option
@storage_option
@click.option("--top", type=int, default=10, show_default=True, help="How many of the fastest trials to list.")
@click.option("--plots", metavar="DIR", default=None, help="Write the figures there as PNG and HTML files.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON, for scripts.")
@_reports_errors
def report(study_name: str | None, storage: str | None, top: int, plots: str | None, as_json: bool) -> None:
    """Show a study: the top trials and the baseline, status counts, speedups, which knobs mattered."""
    from autotune.report._report import build_report

    result = build_report(study_name, storage, top=top, plots=plots)
    if as_json:
        import json

        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        from autotune.report._console import print_report

        print_report(result)


@main.command(
    epilog="""\b
Examples:
  autotune train --config best.yaml                 # the export's full run (its epochs), its workload
  autotune train --config best.yaml --steps 2000 --device cuda:1
  autotune train --config best.yaml --time 2h --checkpoint-every 10m
  autotune train --config best.yaml --resume        # continue from the latest checkpoint in checkpoints/
  autotune train --workload train.py:workload --config best.yaml --epochs 3 --out run.json
  autotune train --config best.yaml --epochs 3 --same-progress   # the recipe's 3 epochs, at the config's batch
"""
)
@click.option(
    "--config",
    "config_path",
    metavar="FILE",
    default="best.yaml",
    show_default=True,
    help="The config to train with: export-best's file, or any YAML/JSON with a config: mapping.",
)
@click.option(
    "--workload",
    "workload_spec",
    metavar="FILE.py:NAME|MODULE:NAME",
    default=None,
    help="Your training job. Default: the export's workload, else the built-in demo.",
)
@click.option(
    "--epochs",
    type=float,
    default=None,
    help="Passes over the dataset. Default: the export's full-run epochs, else the workload's.",
)
@click.option("--steps", type=int, default=None, help="Optimizer steps to run instead of epochs.")
@click.option(
    "--time",
    "time_limit",
    metavar="DURATION",
    default=None,
    help="Train until this much time is up (e.g. 10m, 2h); OneCycle spans the steps it allows at the measured rate.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=None, help="Seed of torch, random and NumPy. Default: unseeded.")
@click.option(
    "--checkpoint-dir",
    metavar="DIR",
    default="checkpoints",
    show_default=True,
    help="Where checkpoints go (the latest two are kept).",
)
@click.option(
    "--checkpoint-every",
    metavar="N|DURATION",
    default="30m",
    show_default=True,
    help="Save every N optimizer steps (500) or every DURATION (5m); 'off': only at the end and on SIGINT/SIGTERM.",
)
@click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in --checkpoint-dir.")
@click.option(
    "--out",
    metavar="FILE",
    default=None,
    help="Where to write the run record (JSON). Default: run_record.json in --checkpoint-dir.",
)
@click.option(
    "--storage",
    metavar="URL",
    default=None,
    help="Storage of the study the config came from, where the run's figures are recorded. "
    "Default: the export's (a storage whose password the export hides needs this).",
)
@click.option(
    "--write-back/--no-write-back",
    default=True,
    show_default=True,
    help="Record the run's actual figures with the study and trial the config came from.",
)
@click.option(
    "--same-progress",
    is_flag=True,
    help="--epochs or --steps are the recipe's: scale them to the recipe's progress at the config's "
    "effective batch (the export's progress: samples_factor). Without a length, the export's epochs "
    "already do.",
)
@_reports_errors
def train(
    config_path: str,
    workload_spec: str | None,
    epochs: float | None,
    steps: int | None,
    time_limit: str | None,
    device: str,
    seed: int | None,
    checkpoint_dir: str,
    checkpoint_every: str,
    resume: bool,
    out: str | None,
    storage: str | None,
    write_back: bool,
    same_progress: bool,
) -> None:
    """Train with a config: the full run, with checkpoints, and its figures against the projection.

    SIGINT (Ctrl-C) and SIGTERM save a checkpoint and exit with 130 and 143; --resume continues.
    """
    from autotune.knobs._units import parse_duration
    from autotune.report._train_console import TrainPrinter, print_run_record
    from autotune.training._full_run import train as run_train
    from autotune.training._run_plan import TrainOptions, parse_checkpoint_every

    every_steps, every_seconds = parse_checkpoint_every(checkpoint_every)
    options = TrainOptions(
        config=config_path,
        workload=workload_spec,
        epochs=epochs,
        steps=steps,
        time_seconds=parse_duration(time_limit, what="--time") if time_limit else None,
        device=device,
        seed=seed,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every_steps=every_steps,
        checkpoint_every_seconds=every_seconds,
        resume=resume,
        out=out,
        storage=storage,
        write_back=write_back,
        same_progress=same_progress,
    )
    printer = TrainPrinter()
    try:
        record = run_train(options, printer)
    finally:
        printer.close()
    print_run_record(record)
    if record.exit_code:
        sys.exit(record.exit_code)


if __name__ == "__main__":  # pragma: no cover
    main()
