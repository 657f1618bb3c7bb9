"""How the CLI shows a search and an export in the terminal (rich)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape

from autotune.knobs import _table as knob_table
from autotune.knobs._config import TrainConfig
from autotune.knobs._table import KNOB_NAMES, WORKER_KNOBS
from autotune.knobs._units import format_duration, format_size
from autotune.store import _records
from autotune.store._records import TrialRecord, as_record
from autotune.study._options import SearchListener, SearchPlan, SearchResult
from autotune.study._selection import paired_lines

if TYPE_CHECKING:
    from pathlib import Path

    from optuna.trial import FrozenTrial

    from autotune.export._export import Export
    from autotune.report._report import Report
    from autotune.study._lr_find import LRFindResult
    from autotune.study._selection import Candidate

# Off a terminal (a pipe, a log file, CI), lines are not wrapped at rich's default 80 columns.
console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)

_STATUS_STYLE = {
    "ok": "green",
    "oom": "magenta",
    "slow": "yellow",
    "diverged": "red",
    "timeout": "red",
    "error": "red",
    "interrupted": "cyan",
    "duplicate": "dim",
}


def describe_config(config: TrainConfig | dict[str, Any]) -> str:
    """The knobs of one trial on one line: ``bs 64x2 · workers 4 (prefetch 2, persistent) · bf16 ...``."""
    c = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(config)
    values = c.to_dict()
    parts = [f"bs {c.batch_size}" + (f"x{c.accumulation_steps}" if c.accumulation_steps > 1 else "")]
    # The knobs that act only with workers go in brackets after them; the rest follow in the table's order.
    extras = knob_table.describe({name: values[name] for name in WORKER_KNOBS}) if c.num_workers else []
    parts.append(f"workers {c.num_workers}" + (f" ({', '.join(extras)})" if extras else ""))
    shown = [
        name for name in KNOB_NAMES if name not in ("batch_size", "accumulation_steps", "num_workers", *WORKER_KNOBS)
    ]
    parts += knob_table.describe({name: values[name] for name in shown})
    parts += [f"{name} {value}" for name, value in c.workload_knobs.items()]
    return " · ".join(parts)


class SearchPrinter(SearchListener):
    """One line per finished trial: number, status, throughput, peak memory, config, best so far;
    on a terminal, a progress bar over the trial and time budgets below them."""

    def __init__(self, n_trials: int | None = None, timeout_seconds: float | None = None) -> None:
        self.n_trials = n_trials
        self.timeout_seconds = timeout_seconds
        self.progress: Any = None

    def _start_progress(self) -> None:
        if not console.is_terminal:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[budget]}"),
            console=console,
            transient=True,
        )
        budget = f"of {format_duration(self.timeout_seconds)}" if self.timeout_seconds else ""
        self.task = self.progress.add_task("trials", total=self.n_trials, budget=budget)
        self.progress.start()

    def on_trial_start(self, number: int, config: TrainConfig, is_baseline: bool) -> None:
        if self.progress is not None:
            what = "baseline" if is_baseline else describe_config(config)
            self.progress.update(self.task, description=f"trial #{number}: {escape(what)}")

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def on_lr_find_start(self, trial: FrozenTrial) -> None:
        self.close()
        console.print(f"running the LR range test on trial #{trial.number} ...")

    def on_recipe_check_start(self, trial: FrozenTrial, max_lr: float, rule: str) -> None:
        self.close()
        config = TrainConfig.from_dict(TrialRecord.of(trial).config)
        console.print(
            f"checking trial #{trial.number} (effective batch {config.effective_batch_size}, "
            f"{escape(rule)}) against the recipe, both run to the recipe's progress ..."
        )

    def on_workload_check(self, plan: SearchPlan) -> None:
        console.print(
            "checking the workload: its first training step at the baseline "
            f"(batch_size {plan.baseline.batch_size}) ..."
        )

    def on_note(self, message: str) -> None:
        console.print(f"  [dim]note:[/] {escape(message)}")

    def on_slot_line(self, slot: str, line: str) -> None:
        if line.strip():
            console.print(f"[dim]\\[{escape(slot)}][/] {escape(line)}")

    def on_plan(self, plan: SearchPlan) -> None:
        from autotune.store._storage import redact

        where = escape(redact(plan.storage))
        console.print(f"[bold]study[/] {escape(plan.study_name)} in {where} on {escape(plan.device.describe())}")
        for note in plan.notes:
            console.print(f"  [dim]note:[/] {escape(note)}")
        budgets = plan.budgets
        console.print(f"  memory: feasible below {escape(budgets.describe_memory_limit())}")
        if budgets.deadline_seconds is not None:
            console.print(
                f"  full run: {budgets.epochs:g} epochs, feasible within {escape(budgets.describe_time_limit())}"
            )
        console.print(f"  trial timeout {format_duration(plan.trial_timeout_seconds)}")
        searched = ", ".join(plan.space.searched) or "nothing (every knob fixed)"
        console.print(f"  searching {searched}")
        console.print(f"  baseline: {escape(describe_config(plan.baseline))}")
        self._start_progress()

    def on_trial_end(self, trial: FrozenTrial, best: FrozenTrial | None) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)
        record = TrialRecord.of(trial)
        status = _records.status(trial)
        style = _STATUS_STYLE.get(status, "white")
        per_second = f"{escape(_records.unit(record))}/s"
        measured = status == "ok" and record.samples_per_second is not None
        figure = f"{record.rate:9.1f} {per_second}" if measured else " " * (10 + len(per_second))
        peak = format_size(record.peak_memory_bytes)
        tag = " [cyan]baseline[/]" if record.baseline else ""
        knobs = escape(describe_config(record.config)) if record.config else ""
        line = f"#{trial.number:<3} [{style}]{status:<8}[/] {figure}  peak {peak:>10}  {knobs}{tag}"
        console.print(line)
        if status != "ok" and record.reason:
            console.print(f"      [dim]{escape(record.reason)}[/]")
        if record.noise_scale is not None:
            console.print(f"      [dim]gradient noise scale {escape(noise_line(record))}[/]")
        if best is not None and best.number == trial.number:
            console.print(f"      [bold green]new best[/] {_records.rate(best):.1f} {escape(_records.unit(best))}/s")


def noise_line(trial: TrialRecord | Mapping[str, Any]) -> str:
    """A trial's gradient noise scale, as its line shows it."""
    record = as_record(trial)
    stderr = record.noise_scale_stderr
    groups = (record.noise or {}).get("groups")
    return (
        f"{record.noise_scale:.3g}"
        + (f" ± {stderr:.2g}" if stderr is not None else "")
        + " samples"
        + (f" ({groups} groups of micro-batches)" if groups else "")
    )


def print_lr_find(result: LRFindResult, picture: Path | None = None) -> None:
    edge = "stopped when the loss blew up" if result.stopped_early else "ran to the end of its range"
    console.print(
        f"LR range test on trial #{result.trial}: minimum smoothed loss at lr {result.lr_at_min_loss:.3g}, "
        f"steepest descent at {result.lr_steepest:.3g} ({len(result.lrs)} steps, {edge})"
    )
    console.print(f"[bold]suggested max_lr {result.suggestion:.3g}[/] for OneCycle")
    if result.check is not None:
        verdict = "kept" if result.check["kept"] else f"not kept: max_lr {result.max_lr:.3g} will be exported"
        console.print(f"check: {escape(result.check['reason'])} ({verdict})")
    if picture is not None:
        console.print(f"curve drawn in {escape(str(picture))}")


def print_search_result(result: SearchResult) -> None:
    counts = ", ".join(f"{count} {status}" for status, count in result.status_counts.items())
    console.print(f"\n[bold]{result.trials_run} trial(s) run[/]; study {escape(result.study_name)} now has: {counts}")
    if result.best is None:
        console.print("[red]no feasible trial yet[/]")
        return
    best = result.best
    unit = escape(_records.unit(best))
    paired = result.paired if result.paired is not None and result.paired["trial"] == best.number else None
    if paired is not None:  # the rounds' figure, not the single one that won the ranking (it reads high)
        record = TrialRecord.of(best)
        per_sample = _records.rate(best) / record.samples_per_second if record.samples_per_second else 1.0
        line = (
            f"best: trial #{best.number} at {paired['samples_per_second'] * per_sample:.1f} {unit}/s side by side, "
            f"{paired['speedup']:.2f}x the baseline (trial #{paired['baseline_trial']}); "
            f"its own trial read {_records.rate(best):.1f}"
        )
    else:
        line = f"best: trial #{best.number} at {_records.rate(best):.1f} {unit}/s"
        if result.baseline is not None and TrialRecord.of(result.baseline).status == "ok":
            speedup = _records.rate(best) / _records.rate(result.baseline)
            line += f", {speedup:.2f}x the baseline (trial #{result.baseline.number})"
    console.print(line)
    console.print(f"  {escape(describe_config(TrialRecord.of(best).config))}")
    if result.paired is not None:
        for line in paired_lines(result.paired):
            console.print(escape(line))
    if result.lr_find is not None:
        print_lr_find(result.lr_find)
    for note in result.notes:
        console.print(f"[dim]note:[/] {escape(note)}")
    console.print(f"the search took {format_duration(result.seconds)}, the range test and re-measurement included")
    console.print(f"export it with: autotune export-best --study {escape(result.study_name)}")


def print_verify_run(round_index: int, rounds: int, candidate: Candidate, rate: float | None) -> None:
    figure = f"{rate:.1f} samples/s" if rate is not None else "failed"  # verify re-measures samples/s
    tag = " (baseline)" if candidate.is_baseline else ""
    console.print(f"  verify round {round_index + 1}/{rounds}: trial #{candidate.number}{tag} {figure}")


def print_export(export: Export) -> None:
    document = export.document
    measured, provenance = document["measured"], document["provenance"]
    for line in export.explanation:
        console.print(escape(line))
    console.print(
        f"trial #{provenance['trial']} of study {escape(provenance['study'])}: "
        f"{_records.rate(measured):.1f} {escape(_records.unit(measured))}/s, "
        f"peak {format_size(measured['peak_memory_bytes'])}, "
        f"warm-up {format_duration(measured['warmup_seconds'])}, effective batch {measured['effective_batch_size']}"
    )
    console.print(f"  {escape(describe_config(export.config))}")
    full_run = document["full_run"]
    if full_run["fits_deadline"] is not None:
        verdict = "fits" if full_run["fits_deadline"] else "[red]does not fit[/]"
        console.print(f"  full run: {format_duration(full_run['projected_seconds'])}, {verdict} the deadline")
    console.print(escape(document["payoff"]["line"]))
    if export.path is not None:
        console.print(f"written to {escape(str(export.path))}")


def overhead_line(overhead: dict) -> str:
    """What trials cost beyond their timed windows, as report prints it."""
    startup = overhead.get("median_startup_seconds")
    return (
        f"trial overhead (wall time outside the timed windows and evaluation, compile aside): median "
        f"{overhead['median_fraction']:.0%} of a trial, {overhead['median_seconds']:.2f}s of "
        f"{overhead['median_wall_seconds']:.2f}s"
        + (f" (process start and imports {startup:.2f}s)" if startup is not None else "")
        + f", over {overhead['trials']} trials"
    )


def print_report(report: Report) -> None:
    from rich.table import Table

    from autotune.training._run_record import full_run_line

    counts = ", ".join(f"{count} {status}" for status, count in report.status_counts.items())
    console.print(f"[bold]study {escape(report.study)}[/]: {counts}")
    table = Table(show_lines=False)
    per_second = f"{escape(report.unit)}/s"
    numbers = ("#", per_second, "speedup", "cv", "overhead")
    for column in ("#", "status", per_second, "speedup", "cv", "overhead", "peak memory", "full run", "config"):
        table.add_column(column, justify="right" if column in numbers else "left")
    for row in report.rows:
        status = row["status"] + ("" if row["feasible"] or row["status"] != "ok" else " (infeasible)")
        table.add_row(
            f"{row['trial']}" + (" base" if row["baseline"] else ""),
            f"[{_STATUS_STYLE.get(row['status'], 'white')}]{escape(status)}[/]",
            f"{row['unit_per_second']:.1f}" if row["unit_per_second"] else "-",
            f"{row['speedup']:.2f}x" if row["speedup"] else "-",
            f"{row['throughput_cv']:.1%}" if row["throughput_cv"] is not None else "-",
            f"{row['overhead_fraction']:.0%}" if row.get("overhead_fraction") is not None else "-",
            format_size(row["peak_memory_bytes"]),
            format_duration(row["projected_full_run_seconds"]),
            escape(describe_config(row["config"])) if row["config"] else "",
        )
    console.print(table)
    console.print(f"memory: {escape(report.memory)}")
    if report.overhead:
        console.print(escape(overhead_line(report.overhead)))
    if report.paired:
        for line in paired_lines(report.paired):
            console.print(escape(line))
    if report.importances:
        ranked = ", ".join(f"{name} {share:.0%}" for name, share in report.importances.items())
        console.print(f"knobs that mattered (fANOVA importance of {escape(report.objective)}): {escape(ranked)}")
    elif report.importance_note:
        console.print(f"[dim]{escape(report.importance_note)}[/]")
    if report.noise_scale:
        console.print(f"gradient noise scale: {escape(report.noise_scale['line'])}")
    for result in report.lr_find:
        console.print(f"LR range test on trial #{result['trial']}: suggested max_lr {result['suggestion']:.3g}")
    for check in report.recipe_checks:
        console.print(f"recipe check ({'kept' if check['kept'] else 'not kept'}): {escape(check['reason'])}")
    for run in report.full_runs:
        console.print(escape(full_run_line(run)))
    for path in report.plots:
        console.print(f"wrote {escape(path)}")
