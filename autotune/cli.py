"""The ``autotune`` command: parse options, call one library function, print the result.

An option that several commands take is declared once (``SharedOption``, built by ``_shared``) and stacked
on each; choice lists come from the library's constants and numeric ranges mirror the library's own checks,
so click refuses a bad value (its usage error, exit 2) before anything is opened or run.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, get_args

import click

from autotune.exceptions import AutotuneError, ParameterError, Terminated
from autotune.export._export import ExportFormat
from autotune.study._lr_find import SCALINGS
from autotune.study._options import SAMPLERS, ObjectiveKind
from autotune.study._selection import PREFERENCES

if TYPE_CHECKING:
    from autotune.runner import MeasureSettings
    from autotune.study._options import SearchOptions
    from autotune.training._run_plan import TrainOptions

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class RealRange(click.FloatRange):
    """A FloatRange that also refuses NaN, as the library's checks do (NaN passes every bound)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{number} is not in the range {self._describe_range()}.", param, ctx)
        return number


class EffectiveBatch(click.ParamType):
    """``--effective-batch``: an integer >= 1 (the library's bound), or ``free``."""

    name = "effective batch"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int | str:
        text = str(value).strip()
        if text.lower() == "free":
            return "free"
        try:
            number = int(text)
        except ValueError:
            number = 0
        if number < 1:
            self.fail(f"{value!r} is not an integer >= 1 or 'free'.", param, ctx)
        return number


# The library's bounds (SearchOptions, MeasureSettings, Budgets, TrainOptions, export_best), as click types.
AT_LEAST_0 = click.IntRange(min=0)
AT_LEAST_1 = click.IntRange(min=1)
POSITIVE = RealRange(min=0, min_open=True, max=math.inf, max_open=True)  # a finite number > 0
FRACTION = RealRange(min=0, max=1, max_open=True)  # [0, 1)
OPEN_FRACTION = RealRange(min=0, min_open=True, max=1, max_open=True)  # (0, 1)
ABOVE_1 = RealRange(min=1, min_open=True)
PORT = click.IntRange(0, 65535)


class SharedOption(click.Option):
    """An option several commands take, declared once (``_shared``): the same name, type, metavar and
    default in each. Its help is the declaration's, unless a command words it for what the option
    means there."""

    def __init__(self, *args: Any, declared_help: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.declared_help = declared_help


def _shared(*param_decls: str, help: str, **attrs: Any) -> Callable[..., Decorator]:
    """The declaration of a shared option; call it (with ``help=`` for a command's own wording) to
    decorate a command."""

    declared = help

    def option(*, help: str = declared) -> Decorator:
        return click.option(*param_decls, cls=SharedOption, declared_help=declared, help=help, **attrs)

    return option


def _stack(*decorators: Decorator) -> Decorator:
    """One decorator that applies ``decorators`` as if written above the command in this order (--help
    lists the options in it)."""

    def apply(function: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


workload_option = _shared(
    "--workload",
    "workload_spec",
    metavar="FILE.py:NAME|MODULE:NAME",
    default=None,
    help="Your training job (a Workload or a function returning one). Default: the built-in demo.",
)
study_option = _shared(
    "--study", "study_name", metavar="NAME", default=None, help="Study name. Default: derived from the workload."
)
storage_option = _shared(
    "--storage",
    metavar="URL",
    default=None,
    help="Study storage (SQLAlchemy URL, or grpc://HOST:PORT for an 'autotune proxy'). Default: "
    "sqlite:///studies/autotune.db. Share one PostgreSQL URL (or one proxy) to run several autotune "
    "processes on one study.",
)
epochs_option = _shared(
    "--epochs", type=POSITIVE, default=None, help="Epochs of the full run. Default: the workload's."
)
steps_option = _shared(
    "--steps", type=AT_LEAST_1, default=None, help="The full run in optimizer steps, instead of epochs."
)
lr_scaling_option = _shared(
    "--lr-scaling",
    type=click.Choice(SCALINGS),
    default="auto",
    show_default=True,
    help="How max_lr follows a changed effective batch (and where the range test starts): AdaScale's "
    "gain at the gradient noise scale, linear, square root or none; auto: sqrt for Adam-like optimizers, "
    "adascale for SGD-like ones.",
)
timeout_option = _shared(
    "--timeout", metavar="DURATION", default=None, help="Budget for the whole search, e.g. 90s, 10m, 2h."
)
seed_option = _shared("--seed", type=int, default=None, help="Seed of the sampler and of each trial.")
device_option = _shared("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
devices_option = _shared(
    "--devices",
    metavar="all|cpu|cuda:0,cuda:1",
    default=None,
    help="Device slots: one trial process per device at a time, each seeing only its own device "
    "(all: every CUDA device, else the CPU). Default: one, --device.",
)
nproc_option = _shared(
    "--nproc-per-trial",
    "nproc_per_trial",
    type=int,
    metavar="N",
    default=None,
    help="Run each trial as N data-parallel processes, one per device, through torch.distributed's launcher "
    "(torchrun --standalone, no restarts; DistributedDataParallel, a DistributedSampler shard per rank; "
    "nccl on GPUs, gloo on the CPU). batch_size is each rank's: effective batch = batch_size x "
    "accumulation_steps x N. Default: 1, one process.",
)

# How long each trial measures (MeasureSettings).
measure_options = _stack(
    click.option(
        "--warmup-steps",
        type=AT_LEAST_0,
        default=1,
        show_default=True,
        help="Untimed optimizer steps before the windows (worker start, lazy init); "
        "torch.compile trials take one more.",
    ),
    click.option(
        "--windows",
        type=AT_LEAST_1,
        default=3,
        show_default=True,
        help="Timed windows per trial, at least (median is reported).",
    ),
    click.option(
        "--max-windows",
        type=AT_LEAST_1,  # and >= --windows, which MeasureSettings checks
        default=None,
        help="Windows a trial may go on to while its spread is too large to rank it against the best "
        "(default: twice --windows; equal to --windows: a fixed count).",
    ),
    click.option(
        "--target-spread",
        type=OPEN_FRACTION,
        default=0.02,
        show_default=True,
        help="Relative standard error of the windows' throughput at which a trial stops measuring.",
    ),
    click.option("--window-seconds", type=POSITIVE, default=1.0, show_default=True, help="Length of one timed window."),
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
                if command.__name__ in ("search", "worker")
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


# What one search invocation may spend: trials, time, memory.
_search_budget_options = _stack(
    click.option(
        "--trials", "n_trials", type=AT_LEAST_1, default=20, show_default=True, help="Trials to run in this invocation."
    ),
    timeout_option(),
    click.option(
        "--trial-timeout",
        metavar="DURATION",
        default=None,
        help="A trial with no result by then is stopped (status timeout). "
        "Default: 3x a trial's share of --timeout (at least 30s), else 10m.",
    ),
    click.option(
        "--max-memory",
        metavar="SIZE",
        default=None,
        help="Memory budget of one trial, e.g. 640MiB, 24GiB (device memory on CUDA, resident memory on CPU). "
        "Default: the CUDA device's memory, or the machine's available memory.",
    ),
    click.option(
        "--memory-headroom",
        metavar="FRACTION",
        default="10%",
        show_default=True,
        help="Feasible only below (1 - headroom) x --max-memory; 10% or 0.1.",
    ),
)


# The full run each config is ranked for: its batch, length, objective and deadline.
_full_run_options = _stack(
    click.option(
        "--effective-batch",
        type=EffectiveBatch(),
        metavar="N|free",
        default=None,
        help="Samples per optimizer step (batch_size x accumulation_steps x --nproc-per-trial) every trial keeps; "
        "accumulation_steps is derived. Default: the recipe's (the baseline's, or the workload's "
        "effective_batch). 'free': any, each ranked by the time to the recipe's progress (gradient noise "
        "scale), a changed one exported only once checked against the recipe.",
    ),
    epochs_option(),
    steps_option(),
    click.option(
        "--objective",
        type=click.Choice(get_args(ObjectiveKind)),
        default="time",
        show_default=True,
        help="time: rank by the full run's projected wall time (compile, warm-up and evaluation included); "
        "throughput: by steady throughput in the workload's unit.",
    ),
    click.option(
        "--deadline",
        metavar="DURATION",
        default=None,
        help="The full run must finish within this (e.g. 12h); configs projected past it are infeasible.",
    ),
    click.option(
        "--safety-margin",
        metavar="DURATION",
        default=None,
        help="Kept free inside --deadline (e.g. 30m). Default: none.",
    ),
)

# How the search goes: pruning, sampling, the range test after it.
_strategy_options = _stack(
    click.option(
        "--slow-fraction",
        type=FRACTION,
        default=0.5,
        show_default=True,
        help="Prune a trial whose first window is below this fraction of the best trial's throughput (0: no trial "
        "is ended for being slow).",
    ),
    click.option(
        "--lr-find/--no-lr-find",
        default=True,
        show_default=True,
        help="After the speed search, run the LR range test on the best config.",
    ),
    lr_scaling_option(),
    click.option(
        "--divergence-factor",
        type=ABOVE_1,
        default=4.0,
        show_default=True,
        help="A trial whose loss rises above this times its first value ends as diverged.",
    ),
    click.option(
        "--sampler",
        type=click.Choice(SAMPLERS),
        default="guided",
        show_default=True,
        help="guided: each knob moved a step from the best config so far (the batch first), then TPE; "
        "tpe: Optuna's TPE; random: uniform; grid: every config of the space once (each searched "
        "knob a list of choices).",
    ),
    click.option(
        "--pruning/--no-pruning",
        default=True,
        show_default=True,
        help="--no-pruning measures every trial in full: no median or --slow-fraction pruning, no batch "
        "skipped on a fitted curve's prediction.",
    ),
)


@main.command(
    epilog="""\b
Examples:
  autotune search                                   # tune the built-in demo on this machine
  autotune search --workload train.py:workload --trials 30 --timeout 20m
  autotune search --workload mypkg.train:workload --max-memory 24GiB --space my_space.yaml
  autotune search --storage postgresql://user@db/autotune --study resnet50   # one of many workers
  autotune search --workload train.py:workload --effective-batch 256 --deadline 12h --safety-margin 30m
  autotune search --workload train.py:workload --effective-batch free --timeout 10m   # a larger batch must earn it
  autotune search --workload train.py:workload --nproc-per-trial 4 --effective-batch 512   # DDP trials, 4 GPUs
"""
)
@workload_option()
@study_option()
@storage_option()
@click.option("--space", metavar="FILE.yaml", default=None, help="Search space. Default: the shipped default.yaml.")
@_search_budget_options
@_full_run_options
@_strategy_options
@nproc_option()
@seed_option()
@device_option()
@devices_option()
@measure_options
@_reports_errors
def search(**values: Any) -> None:
    """Tune a workload: measure its baseline, then search the speed knobs."""
    from autotune.report._console import SearchPrinter, print_search_result
    from autotune.study._loop import search as run_search

    options = _search_options(values)
    printer = SearchPrinter(options.n_trials, options.timeout_seconds)
    try:
        result = run_search(options, printer)
    finally:
        printer.close()
    print_search_result(result)


@main.command(
    epilog="""\b
Examples:
  autotune worker --study resnet50 --storage postgresql://user@db/autotune             # until the study has its trials
  autotune worker --study resnet50 --storage postgresql://user@db/autotune --trials 10 --timeout 1h
  autotune worker --study resnet50 --storage postgresql://user@db/autotune --workload /mnt/jobs/train.py:workload
"""
)
@study_option(help="The study to join (it must exist). Default: the storage's only study.")
@storage_option()
@workload_option(
    help="The study's workload, where its file lives at another path here than where the study was started. "
    "Default: the path the study recorded."
)
@click.option(
    "--trials",
    "n_trials",
    type=AT_LEAST_1,
    default=None,
    help="Trials this worker runs at most. Default: until the study has the trials its searches asked for.",
)
@timeout_option(help="Budget for this worker, e.g. 90s, 10m, 2h.")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N. Default: what the study was started with.")
@devices_option()
@click.option("--until", "until_trials", type=AT_LEAST_1, default=None, hidden=True)  # a --devices slot's stop
@click.option(
    "--allow-mixed",
    is_flag=True,
    help="Join even where the workload file, torch's version or the device kind differ from the study's "
    "(trials on another device kind are still ranked apart).",
)
@_reports_errors
def worker(
    study_name: str | None,
    storage: str | None,
    workload_spec: str | None,
    n_trials: int | None,
    timeout: str | None,
    device: str | None,
    devices: str | None,
    until_trials: int | None,
    allow_mixed: bool,
) -> None:
    """Join a running study from this machine: its workload, space and budgets are read from it."""
    import dataclasses

    from autotune.knobs._units import parse_duration
    from autotune.report._console import SearchPrinter, console, print_search_result
    from autotune.study._loop import search as run_search
    from autotune.study._worker import join_options

    joined = join_options(
        study_name,
        storage,
        workload=workload_spec,
        n_trials=n_trials,
        timeout_seconds=parse_duration(timeout, what="--timeout") if timeout else None,
        allow_mixed=allow_mixed,
        **_device_values(device, devices),
    )
    if until_trials is not None:
        joined = dataclasses.replace(joined, options=dataclasses.replace(joined.options, trials_target=until_trials))
    for note in joined.notes:
        console.print(f"[yellow]note:[/] {note}")
    printer = SearchPrinter(n_trials or joined.target, joined.options.timeout_seconds)
    try:
        result = run_search(joined.options, printer)
    finally:
        printer.close()
    print_search_result(result)


def _search_options(values: dict[str, Any]) -> SearchOptions:
    """The search's options from the command's values (the library checks them all)."""
    from autotune.study._options import SearchOptions
    from autotune.workload._workload import DEMO_SPEC

    return SearchOptions(
        workload=values["workload_spec"] or DEMO_SPEC,
        study_name=values["study_name"],
        storage=values["storage"],
        space=values["space"],
        n_trials=values["n_trials"],
        **_budget_values(values),
        effective_batch=values["effective_batch"],
        epochs=values["epochs"],
        steps=values["steps"],
        objective=values["objective"],
        slow_fraction=values["slow_fraction"],
        lr_find=values["lr_find"],
        lr_scaling=values["lr_scaling"],
        seed=values["seed"],
        sampler=values["sampler"],
        pruning=values["pruning"],
        **_device_values(values["device"], values["devices"]),
        measure=_measure_settings(values),
        nproc_per_trial=1 if values["nproc_per_trial"] is None else values["nproc_per_trial"],
    )


def _device_values(device: str | None, devices: str | None) -> dict[str, Any]:
    """--device and --devices as the library's ``device`` and ``devices``: one slot is --device itself."""
    from autotune.study._slots import parse_devices

    if devices is None:
        return {} if device is None else {"device": device}
    if device not in (None, "auto"):
        raise ParameterError("give --device or --devices, not both", "devices")
    slots = parse_devices(devices)
    return {"device": slots[0], "devices": slots if len(slots) > 1 else ()}


def _budget_values(values: dict[str, Any]) -> dict[str, Any]:
    """The search's durations, sizes and fractions, read from their text (an error names its option)."""
    from autotune.knobs._units import parse_duration, parse_fraction, parse_size

    def duration(name: str, *, allow_zero: bool = False) -> float | None:
        text = values[name]
        option = "--" + name.replace("_", "-")
        return parse_duration(text, what=option, allow_zero=allow_zero) if text else None

    return {
        "timeout_seconds": duration("timeout"),
        "trial_timeout_seconds": duration("trial_timeout"),
        "max_memory_bytes": parse_size(values["max_memory"], what="--max-memory") if values["max_memory"] else None,
        "memory_headroom": parse_fraction(values["memory_headroom"], what="--memory-headroom"),
        "deadline_seconds": duration("deadline"),
        "safety_margin_seconds": duration("safety_margin", allow_zero=True) or 0.0,
    }


def _measure_settings(values: dict[str, Any]) -> MeasureSettings:
    """How each trial measures; --max-windows defaults to twice --windows."""
    from autotune.runner import MeasureSettings

    windows = values["windows"]
    return MeasureSettings(
        warmup_steps=values["warmup_steps"],
        windows=windows,
        window_seconds=values["window_seconds"],
        seed=values["seed"] or 0,
        divergence_factor=values["divergence_factor"],
        max_windows=values["max_windows"] if values["max_windows"] is not None else 2 * windows,
        target_spread=values["target_spread"],
    )


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
@study_option()
@storage_option()
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
    type=click.Choice(get_args(ExportFormat)),
    default=None,
    help="yaml or json: the whole export. hf, lightning, accelerate: keyword arguments for "
    "TrainingArguments, Trainer, Accelerator (YAML; JSON for a .json --out) and code lines; torch: a "
    "Python script (--out must end in .py). Default: from --out's suffix (.json -> json, .py -> torch, "
    "else yaml).",
)
@click.option(
    "--prefer",
    type=click.Choice(PREFERENCES),
    default="fastest",
    show_default=True,
    help="fastest: highest throughput; memory: least memory within 5% of the fastest; "
    "balanced: the fastest that leaves twice the memory headroom; recipe: the fastest that keeps "
    "the workload knobs marked changes_recipe (sequence length, ...) at the baseline's values.",
)
@click.option(
    "--verify",
    "verify_top",
    type=AT_LEAST_0,
    default=0,
    show_default=True,
    metavar="K",
    help="Re-measure the top K candidates and the baseline in fresh processes, then choose.",
)
@click.option("--rounds", type=AT_LEAST_1, default=3, show_default=True, help="Interleaved rounds of --verify.")
@click.option(
    "--device-kind",
    metavar="KIND",
    default=None,
    help="Rank the trials measured on this device kind, e.g. 'cuda (NVIDIA H200)'. Default: the study's own "
    "(trials on two kinds of device are never ranked together).",
)
@_reports_errors
def export_best(
    study_name: str | None,
    storage: str | None,
    out: str | None,
    fmt: str | None,
    prefer: str,
    verify_top: int,
    rounds: int,
    device_kind: str | None,
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
        prefer=prefer,  # type: ignore[arg-type]
        verify_top=verify_top,
        rounds=rounds,
        on_verify_run=print_verify_run,
        device_kind=device_kind,
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
@study_option()
@storage_option()
@click.option(
    "--trial",
    "trial_number",
    type=int,
    default=None,
    help="The trial whose config is tested. Default: the fastest feasible trial.",
)
@lr_scaling_option(
    help="Centre the sweep on base_lr scaled from the recipe's effective batch to the trial's (auto: "
    "sqrt for Adam-like optimizers, AdaScale's gain for SGD-like ones)."
)
# The sweep's length, not the full run's: its own option, at least 5 steps to suggest from.
@click.option(
    "--steps", type=click.IntRange(min=5), default=100, show_default=True, help="Optimizer steps in the sweep."
)
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
@storage_option()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=PORT, default=8080, show_default=True, help="Port to listen on (0: any free port).")
@_reports_errors
def dashboard(storage: str | None, host: str, port: int) -> None:
    """Serve optuna-dashboard on the study storage; Ctrl-C stops it."""
    from autotune.report._dashboard import serve

    serve(storage, host, port, on_ready=lambda url: click.echo(f"optuna-dashboard at {url} (Ctrl-C to stop)"))
    click.echo("dashboard stopped")


@main.command(
    epilog="""\b
Examples:
  autotune proxy --storage postgresql://user@db/autotune --host 0.0.0.0 --port 13000
  autotune proxy --storage sqlite:///studies/autotune.db   # workers on this machine: grpc://127.0.0.1:13000
""",
)
@storage_option()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every one).")
@click.option("--port", type=click.IntRange(1, 65535), default=13000, show_default=True, help="Port to listen on.")
@_reports_errors
def proxy(storage: str | None, host: str, port: int) -> None:
    """Serve the study storage to workers over gRPC (Optuna's storage proxy); Ctrl-C or SIGTERM stops it.

    Workers take --storage grpc://HOST:PORT wherever a storage URL goes (autotune search --storage
    grpc://proxy-host:13000 --study resnet50); the database then sees one process's connections,
    however many workers there are.
    """
    from autotune.store._proxy import serve_proxy

    serve_proxy(storage, host, port, on_ready=lambda url: click.echo(f"storage proxy at {url} (Ctrl-C to stop)"))
    click.echo("proxy stopped")


@main.command(
    epilog="""\b
Examples:
  autotune report                                   # the storage's only study
  autotune report --study demo --top 5 --plots plots/
  autotune report --study demo --json > report.json
""",
)
@study_option()
@storage_option()
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


# Where the full run saves, how often, and whether it continues from there.
_checkpoint_options = _stack(
    click.option(
        "--checkpoint-dir",
        metavar="DIR",
        default="checkpoints",
        show_default=True,
        help="Where checkpoints go (the latest two are kept).",
    ),
    click.option(
        "--checkpoint-every",
        metavar="N|DURATION",
        default="30m",
        show_default=True,
        help="Save every N optimizer steps (500) or every DURATION (5m); 'off': only at the end and on SIGINT/SIGTERM.",
    ),
    click.option("--resume", is_flag=True, help="Continue from the latest checkpoint in --checkpoint-dir."),
)


@main.command(
    epilog="""\b
Examples:
  autotune train --config best.yaml                 # the export's full run (its epochs), its workload
  autotune train --config best.yaml --steps 2000 --device cuda:1
  autotune train --config best.yaml --time 2h --checkpoint-every 10m
  autotune train --config best.yaml --resume        # continue from the latest checkpoint in checkpoints/
  autotune train --workload train.py:workload --config best.yaml --epochs 3 --out run.json
  autotune train --config best.yaml --epochs 3 --same-progress   # the recipe's 3 epochs, at the config's batch
  autotune train --config best.yaml --nproc-per-trial 2   # 2 DDP ranks (default: the config's world_size)
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
@workload_option(help="Your training job. Default: the export's workload, else the built-in demo.")
@epochs_option(help="Passes over the dataset. Default: the export's full-run epochs, else the workload's.")
@steps_option(help="Optimizer steps to run instead of epochs.")
@click.option(
    "--time",
    "time_limit",
    metavar="DURATION",
    default=None,
    help="Train until this much time is up (e.g. 10m, 2h); OneCycle spans the steps it allows at the measured rate.",
)
@device_option()
@nproc_option(
    help="Train as N data-parallel processes (torchrun --standalone, DistributedDataParallel), as the search's "
    "--nproc-per-trial measured. Default: the config's world_size (1: one process)."
)
@seed_option(help="Seed of torch, random and NumPy. Default: unseeded.")
@_checkpoint_options
@click.option(
    "--out",
    metavar="FILE",
    default=None,
    help="Where to write the run record (JSON). Default: run_record.json in --checkpoint-dir.",
)
@storage_option(
    help="Storage of the study the config came from, where the run's figures are recorded. "
    "Default: the export's (a storage whose password the export hides needs this)."
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
def train(**values: Any) -> None:
    """Train with a config: the full run, with checkpoints, and its figures against the projection.

    SIGINT (Ctrl-C) and SIGTERM save a checkpoint and exit with 130 and 143; --resume continues.
    """
    from autotune.report._train_console import TrainPrinter, print_run_record
    from autotune.training._full_run import train as run_train

    options = _train_options(values)
    printer = TrainPrinter()
    try:
        record = run_train(options, printer)
    finally:
        printer.close()
    print_run_record(record)
    if record.exit_code:
        sys.exit(record.exit_code)


def _train_options(values: dict[str, Any]) -> TrainOptions:
    """The full run's options from the command's values (the library checks them all)."""
    from autotune.knobs._units import parse_duration
    from autotune.training._run_plan import TrainOptions, parse_checkpoint_every

    every_steps, every_seconds = parse_checkpoint_every(values["checkpoint_every"])
    time_limit = values["time_limit"]
    return TrainOptions(
        config=values["config_path"],
        workload=values["workload_spec"],
        epochs=values["epochs"],
        steps=values["steps"],
        time_seconds=parse_duration(time_limit, what="--time") if time_limit else None,
        device=values["device"],
        seed=values["seed"],
        checkpoint_dir=values["checkpoint_dir"],
        checkpoint_every_steps=every_steps,
        checkpoint_every_seconds=every_seconds,
        resume=values["resume"],
        out=values["out"],
        storage=values["storage"],
        write_back=values["write_back"],
        same_progress=values["same_progress"],
        nproc_per_trial=values["nproc_per_trial"],
    )


if __name__ == "__main__":  # pragma: no cover
    main()
