"""How the CLI shows ``autotune train``: a progress bar on a terminal, a plain line every few seconds
elsewhere (CI, pipes, log files), and the run record at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape

from autotune.knobs._units import format_duration
from autotune.report._console import console, describe_config
from autotune.training._run_plan import Deadline, Progress, RunStart, TrainListener
from autotune.training._run_record import RunRecord

TERMINAL_INTERVAL_SECONDS = 0.5
PLAIN_INTERVAL_SECONDS = 5.0


class TrainPrinter(TrainListener):
    def __init__(self) -> None:
        self.terminal = console.is_terminal
        self.progress_interval_seconds = TERMINAL_INTERVAL_SECONDS if self.terminal else PLAIN_INTERVAL_SECONDS
        self.bar: Any = None
        self.length: Any = None

    def on_start(self, start: RunStart) -> None:
        self.length = start.length
        where = f", resuming {escape(str(start.resumed_from))} at step {start.step}" if start.resumed_from else ""
        console.print(
            f"[bold]training[/] {escape(start.workload)} on {escape(start.device)}: "
            f"{escape(start.length.describe())}{where}"
        )
        console.print(f"  {escape(describe_config(start.config))}")
        if start.measured_samples_per_second:
            what = "for the run" if start.length.stop != "time" else "the time given"
            measured = f"{start.measured_samples_per_second:.1f} samples/s"
            if start.unit != "samples" and start.measured_unit_per_second:
                measured = f"{start.measured_unit_per_second:.1f} {escape(start.unit)}/s"
            console.print(f"  measured {measured}; projected {format_duration(start.projected_seconds)} {what}")
        if start.deadline_seconds is not None:
            margin = (
                f" less a {format_duration(start.safety_margin_seconds)} margin" if start.safety_margin_seconds else ""
            )
            console.print(f"  deadline {format_duration(start.deadline_seconds)}{margin}")
        if self.terminal:
            self._start_bar(start)

    def _start_bar(self, start: RunStart) -> None:
        from rich.progress import BarColumn, Progress, TextColumn

        self.bar = Progress(
            TextColumn("{task.fields[steps]}"),
            BarColumn(),
            TextColumn("{task.fields[figures]}"),
            TextColumn("{task.fields[times]}"),
            TextColumn("{task.fields[deadline]}"),
            console=console,
            transient=True,
        )
        timed = start.length.stop == "time"
        total = start.length.time_limit_seconds if timed else start.length.target_steps
        self.task = self.bar.add_task(
            "train",
            total=total,
            completed=0 if timed else start.step,
            steps=f"step {start.step}",
            figures="",
            times="",
            deadline="",
        )
        self.bar.start()

    def on_progress(self, progress: Progress) -> None:
        steps = f"step {progress.step}" + (f"/{progress.total_steps}" if progress.total_steps else "")
        figures = f"{_rate(progress)} · loss {progress.loss:.4g}" if progress.loss is not None else _rate(progress)
        times = f"{format_duration(progress.elapsed_seconds)} elapsed, ETA {format_duration(progress.eta_seconds)}"
        deadline = _deadline(progress.deadline)
        if self.bar is not None:
            timed = progress.total_steps is None
            self.bar.update(
                self.task,
                completed=progress.elapsed_seconds if timed else progress.step,
                steps=f"{steps} ({progress.epoch:.2f} ep)",
                figures=escape(figures),
                times=times,
                deadline=deadline,
            )
            return
        line = f"{steps} ({progress.epoch:.2f} epochs) · {figures} · {times}"
        console.print(escape(line + (f" · {deadline}" if deadline else "")))

    def on_checkpoint(self, path: Path, step: int) -> None:
        if self.bar is None:
            console.print(f"checkpoint at step {step}: {escape(str(path))}")

    def on_evaluation(self, evaluation: dict[str, Any]) -> None:
        console.print(
            f"evaluation at step {evaluation['step']} (epoch {evaluation['epoch']:.2f}): "
            f"{escape(_metrics(evaluation['metrics']))}"
        )

    def on_note(self, line: str) -> None:
        console.print(escape(line) if line.startswith("warning:") else f"[dim]note:[/] {escape(line)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


def _metrics(metrics: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4g}" for name, value in metrics.items()) or "no metrics"


def _rate(progress: Progress) -> str:
    if progress.unit_per_second is None:
        return "-"
    return f"{progress.unit_per_second:.1f} {progress.unit}/s"


def _deadline(deadline: Deadline | None) -> str:
    if deadline is None:
        return ""
    text = f"deadline {format_duration(deadline.deadline_seconds)}: {format_duration(deadline.remaining_seconds)} left"
    if deadline.on_track is None:
        return text
    verdict = "on track" if deadline.on_track else "behind"
    return (
        f"{text}, {verdict} (full run ends at {format_duration(deadline.finish_seconds)}, "
        f"limit {format_duration(deadline.limit_seconds)})"
    )


def _throughput_line(record: RunRecord) -> str:
    """The record's steady throughput against the measured one, and its overall throughput."""
    unit = record.unit
    # A workload with a unit of its own: every figure in it, the steady samples/s beside.
    in_unit = unit != "samples" and record.unit_per_second is not None
    rates = f"{record.samples_per_second:.1f} samples/s"
    if in_unit:
        rates = f"{record.unit_per_second:.1f} {unit}/s ({rates})"
    line = f"  throughput {rates} steady"
    if in_unit and record.unit_per_second is not None and record.measured_unit_per_second:
        line += (
            f", {record.unit_per_second / record.measured_unit_per_second:.2f}x the measured "
            f"{record.measured_unit_per_second:.1f} {unit}/s"
        )
    elif record.throughput_ratio is not None:
        line += f", {record.throughput_ratio:.2f}x the measured {record.measured_samples_per_second:.1f} samples/s"
    if in_unit and record.overall_unit_per_second is not None:
        line += f"; {record.overall_unit_per_second:.1f} {unit}/s overall, warm-up included"
    elif record.overall_samples_per_second is not None:
        line += f"; {record.overall_samples_per_second:.1f} samples/s overall, warm-up included"
    return line


def print_run_record(record: RunRecord) -> None:
    length = f"{record.steps} steps ({record.epochs:.2f} epochs)"
    if record.status == "interrupted":
        console.print(
            f"[yellow]interrupted by {record.signal}[/] after {length} in "
            f"{format_duration(record.seconds)}; continue it with the same command and --resume"
        )
    else:
        console.print(
            f"[bold]finished[/] {length} in {format_duration(record.seconds)} "
            f"(setup {format_duration(record.setup_seconds)})"
        )
    if record.samples_per_second is not None:
        console.print(escape(_throughput_line(record)))
    if record.projected_seconds is not None:
        console.print(
            f"  time {format_duration(record.seconds)} against {format_duration(record.projected_seconds)} "
            f"projected for {record.steps} steps ({record.time_ratio:.2f}x)"
        )
    if record.deadline_seconds is not None and record.fits_deadline is not None:
        verdict = "fits" if record.fits_deadline else "[red]does not fit[/]"
        basis = "" if record.is_full_run else " at this run's pace"
        console.print(
            f"  full run {format_duration(record.full_run_estimate_seconds)}{basis}: {verdict} the "
            f"deadline {format_duration(record.deadline_seconds)} less "
            f"{format_duration(record.safety_margin_seconds)}"
        )
    if record.final_loss is not None:
        console.print(f"  final loss {record.final_loss:.4g}")
    if record.evaluations:
        last = record.evaluations[-1]
        console.print(
            f"  evaluation at step {last['step']}: {escape(_metrics(last['metrics']))} "
            f"({format_duration(record.evaluation_seconds)} of evaluating in all)"
        )
    if record.checkpoint:
        console.print(f"  checkpoint {escape(record.checkpoint)}")
    if record.record_path:
        console.print(f"  record {escape(record.record_path)}")
