"""The study's figures: throughput and peak memory against batch size, with the fitted curves.

Each figure is built once from the trials as plain series, then drawn with plotly (stored
with the study for optuna-dashboard, and written as HTML) or matplotlib (PNG).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from autotune.store import _records
from autotune.store._records import TrialRecord
from autotune.study import _curves
from autotune.study._budget import Budgets

MIB = 2**20


@dataclasses.dataclass(frozen=True)
class Series:
    name: str
    x: list[float]
    y: list[float]
    labels: list[str]  # hover text: the trial number and status


@dataclasses.dataclass(frozen=True)
class Figure:
    id: str  # a valid HTML id: the dashboard overwrites a stored figure with the same id
    title: str
    x_title: str
    y_title: str
    series: list[Series]
    lines: list[tuple[str, float]]  # horizontal reference lines: (label, y)
    log_x: bool = True
    curves: list[Series] = dataclasses.field(default_factory=list)  # fitted curves, drawn as lines


def study_figures(trials: Sequence[Any], budgets: Budgets) -> list[Figure]:
    return [throughput_figure(trials), memory_figure(trials, budgets)]


def throughput_figure(trials: Sequence[Any]) -> Figure:
    """Throughput in the workload's unit (tokens/s, samples/s) against batch size, one series per
    precision; finished trials only."""
    groups: dict[str, Series] = {}
    unit = "samples"
    for trial in trials:
        attrs = TrialRecord.of(trial)
        if attrs.status != "ok" or not attrs.config:
            continue
        precision = attrs.config["precision"]
        series = groups.setdefault(precision, Series(precision, [], [], []))
        series.x.append(attrs.config["batch_size"])
        series.y.append(_records.rate(trial))
        series.labels.append(f"trial #{trial.number}")
        unit = _records.unit(trial)
    curves = _fitted_curve(
        trials,
        "throughput_fit",
        _curves.predicted_rate,
        lambda fit: f"fitted: ceiling {fit['ceiling_per_second']:.1f}/s, knee at batch {fit['knee_batch']:.0f}",
    )
    return Figure(
        id="throughput-vs-batch-size",
        title="Throughput against batch size, per precision",
        x_title="batch size",
        y_title=f"{unit}/s",
        series=[groups[name] for name in sorted(groups)],
        lines=[],
        curves=curves,
    )


def _fitted_curve(
    trials: Sequence[Any], key: str, predict: Callable[[dict, float], float], name: Callable[[dict], str]
) -> list[Series]:
    """The most recent fit stored with a trial under ``key``, drawn over the trials' batch sizes
    (none when no trial has one)."""
    fit = next((f for t in reversed(list(trials)) if (f := getattr(TrialRecord.of(t), key))), None)
    if fit is None:
        return []
    xs = _span(trials)
    return [Series(name(fit), xs, [predict(fit, x) for x in xs], [])]


def _span(trials: Sequence[Any], points: int = 40) -> list[float]:
    """Batch sizes from the smallest to the largest any trial had, evenly spaced on a log scale."""
    batches = [config["batch_size"] for t in trials if (config := TrialRecord.of(t).config)]
    low, high = min(batches, default=1), max(batches, default=1)
    if high <= low:
        return [float(low)]
    return [low * (high / low) ** (i / (points - 1)) for i in range(points)]


def memory_figure(trials: Sequence[Any], budgets: Budgets) -> Figure:
    """Peak memory against batch size: trials that fit, and those that ran out, with the limits."""
    fits = Series("fits", [], [], [])
    out = Series("out of memory", [], [], [])
    for trial in trials:
        attrs = TrialRecord.of(trial)
        peak = attrs.peak_memory_bytes
        if peak is None or not attrs.config or attrs.skipped:
            continue
        series = out if attrs.status == "oom" else fits
        series.x.append(attrs.config["batch_size"])
        series.y.append(peak / MIB)
        series.labels.append(f"trial #{trial.number} ({_records.status(trial)})")
    lines = []
    if budgets.memory_budget_bytes is not None:
        lines.append(("budget", budgets.memory_budget_bytes / MIB))
        lines.append((f"limit ({budgets.memory_headroom:.0%} headroom)", (budgets.memory_limit_bytes or 0) / MIB))
    curves = _fitted_curve(
        trials,
        "memory_fit",
        lambda fit, batch: _curves.predicted_peak(fit, batch) / MIB,
        lambda fit: f"fitted: {fit['bytes_per_sample'] / MIB:.2f} MiB per sample",
    )
    return Figure(
        id="peak-memory-vs-batch-size",
        title="Peak memory against batch size",
        x_title="batch size",
        y_title="peak memory (MiB)",
        series=[s for s in (fits, out) if s.x],
        lines=lines,
        curves=curves,
    )


def to_plotly(figure: Figure) -> Any:
    import plotly.graph_objects as go

    plot = go.Figure()
    for series in figure.series:
        plot.add_trace(go.Scatter(x=series.x, y=series.y, mode="markers", name=series.name, text=series.labels))
    for curve in figure.curves:
        plot.add_trace(go.Scatter(x=curve.x, y=curve.y, mode="lines", name=curve.name, line={"dash": "dot"}))
    for label, y in figure.lines:
        plot.add_hline(y=y, line_dash="dash", annotation_text=label)
    plot.update_layout(title=figure.title, xaxis_title=figure.x_title, yaxis_title=figure.y_title)
    if figure.log_x:
        plot.update_xaxes(type="log")
    return plot


def write_png(figure: Figure, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    canvas, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    for series in figure.series:
        axes.scatter(series.x, series.y, label=series.name)
    for curve in figure.curves:
        axes.plot(curve.x, curve.y, linestyle=":", label=curve.name)
    for index, (label, y) in enumerate(figure.lines):
        axes.axhline(y, linestyle="--", color=f"C{3 + index}", label=label)
    if figure.log_x:
        axes.set_xscale("log", base=2)
    axes.set_title(figure.title)
    axes.set_xlabel(figure.x_title)
    axes.set_ylabel(figure.y_title)
    if figure.series or figure.lines:
        axes.legend()
    axes.grid(True, alpha=0.3)
    canvas.tight_layout()
    canvas.savefig(path)
    plt.close(canvas)
    return path


def write_files(figures: Sequence[Figure], folder: str | Path) -> list[Path]:
    """Each figure as ``<id>.html`` (interactive, plotly) and ``<id>.png``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for figure in figures:
        html = folder / f"{figure.id}.html"
        to_plotly(figure).write_html(html, include_plotlyjs="directory")  # one plotly.min.js beside them, offline
        written += [html, write_png(figure, folder / f"{figure.id}.png")]
    return written
