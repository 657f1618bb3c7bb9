"""autotune.study._figures: the study's figures built from set trials as plain series (throughput and peak
memory against batch size, the fitted curves, the budget lines), then drawn with plotly and matplotlib."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from autotune.knobs._config import TrainConfig
from autotune.study._budget import Budgets
from autotune.study._figures import (
    MIB,
    memory_figure,
    study_figures,
    throughput_figure,
    to_plotly,
    write_files,
)

THROUGHPUT_FIT = {"ceiling_per_second": 2000.0, "half_batch": 16.0, "knee_batch": 304.0, "batch_sizes": [8, 64]}
MEMORY_FIT = {"intercept_bytes": 10 * MIB, "bytes_per_sample": 2 * MIB, "batch_sizes": [8, 64]}


def _trial(number: int, batch: int, status: str = "ok", *, precision: str = "fp32", **attrs):
    """A finished trial of tiny at ``batch`` (its figures in user attributes, as the objective records them)."""
    config = TrainConfig(batch_size=batch, precision=precision).to_dict()
    user_attrs = {"config": config, "status": status, **attrs}
    state = TrialState.COMPLETE if status == "ok" else TrialState.PRUNED
    trial = optuna.trial.create_trial(state=state, value=1.0 if status == "ok" else None, user_attrs=user_attrs)
    trial.number = number
    return trial


def test_throughput_figure_has_a_series_per_precision_of_the_trials_that_finished_fine():
    trials = [
        _trial(0, 8, samples_per_second=800.0, unit_per_second=8000.0, unit="tokens"),
        _trial(1, 32, precision="bf16", samples_per_second=1500.0, unit_per_second=15000.0, unit="tokens"),
        _trial(2, 64, samples_per_second=1200.0, unit_per_second=12000.0, unit="tokens"),
        _trial(3, 128, "oom", samples_per_second=None),
        _trial(4, 16, "slow", samples_per_second=90.0, unit_per_second=900.0, unit="tokens"),
    ]
    figure = throughput_figure(trials)
    assert (figure.id, figure.x_title, figure.y_title) == ("throughput-vs-batch-size", "batch size", "tokens/s")
    assert [(s.name, s.x, s.y, s.labels) for s in figure.series] == [
        ("bf16", [32], [15000.0], ["trial #1"]),
        ("fp32", [8, 64], [8000.0, 12000.0], ["trial #0", "trial #2"]),
    ]  # in the workload's unit; the oom and slow trials left out
    assert figure.curves == [] and figure.log_x is True


def test_throughput_figure_draws_the_latest_fitted_curve_over_the_trials_batches():
    trials = [
        _trial(0, 8, samples_per_second=800.0),
        _trial(1, 64, samples_per_second=1500.0, throughput_fit={**THROUGHPUT_FIT, "ceiling_per_second": 1.0}),
        _trial(2, 16, samples_per_second=1200.0, throughput_fit=THROUGHPUT_FIT),
    ]
    [curve] = throughput_figure(trials).curves
    assert curve.name == "fitted: ceiling 2000.0/s, knee at batch 304"  # trial #2's, the latest
    assert len(curve.x) == 40 and (curve.x[0], curve.x[-1]) == (pytest.approx(8.0), pytest.approx(64.0))
    assert curve.y[0] == pytest.approx(2000.0 * 8 / (16 + 8))
    assert curve.y[-1] == pytest.approx(2000.0 * 64 / (16 + 64))
    assert curve.x == sorted(curve.x) and curve.labels == []


def test_a_fitted_curve_over_one_batch_is_one_point():
    trials = [_trial(0, 8, samples_per_second=800.0, throughput_fit=THROUGHPUT_FIT)]
    [curve] = throughput_figure(trials).curves
    assert (curve.x, curve.y) == ([8.0], [pytest.approx(2000.0 * 8 / 24)])


def test_memory_figure_splits_the_trials_that_fit_from_those_that_ran_out_with_the_budget_lines():
    trials = [
        _trial(0, 8, peak_memory_bytes=100 * MIB),
        _trial(1, 32, "slow", peak_memory_bytes=300 * MIB),
        _trial(2, 64, "oom", peak_memory_bytes=950 * MIB),
        _trial(3, 128, "oom", peak_memory_bytes=950 * MIB, skipped=True),  # predicted: never ran
        _trial(4, 16),  # no peak recorded
    ]
    figure = memory_figure(trials, Budgets(memory_budget_bytes=1000 * MIB, memory_headroom=0.2))
    assert (figure.id, figure.y_title) == ("peak-memory-vs-batch-size", "peak memory (MiB)")
    assert [(s.name, s.x, s.y, s.labels) for s in figure.series] == [
        ("fits", [8, 32], [100.0, 300.0], ["trial #0 (ok)", "trial #1 (slow)"]),
        ("out of memory", [64], [950.0], ["trial #2 (oom)"]),
    ]
    assert figure.lines == [("budget", 1000.0), ("limit (20% headroom)", pytest.approx(800.0))]


def test_memory_figure_without_a_budget_or_an_oom_has_no_lines_and_no_empty_series():
    trials = [
        _trial(0, 8, peak_memory_bytes=100 * MIB),
        _trial(1, 64, peak_memory_bytes=200 * MIB, memory_fit=MEMORY_FIT),
    ]
    figure = memory_figure(trials, Budgets())
    assert [s.name for s in figure.series] == ["fits"] and figure.lines == []
    [curve] = figure.curves
    assert curve.name == "fitted: 2.00 MiB per sample"
    assert (curve.y[0], curve.y[-1]) == (pytest.approx(10 + 2 * 8), pytest.approx(10 + 2 * 64))  # in MiB


def test_study_figures_are_throughput_then_memory():
    figures = study_figures([_trial(0, 8, samples_per_second=800.0, peak_memory_bytes=MIB)], Budgets())
    assert [figure.id for figure in figures] == ["throughput-vs-batch-size", "peak-memory-vs-batch-size"]


def test_to_plotly_draws_markers_curves_and_lines_on_a_log_axis():
    trials = [
        _trial(0, 8, peak_memory_bytes=100 * MIB),
        _trial(1, 64, "oom", peak_memory_bytes=950 * MIB, memory_fit=MEMORY_FIT),
    ]
    plot = to_plotly(memory_figure(trials, Budgets(memory_budget_bytes=1000 * MIB)))
    assert [(trace.name, trace.mode) for trace in plot.data] == [
        ("fits", "markers"),
        ("out of memory", "markers"),
        ("fitted: 2.00 MiB per sample", "lines"),
    ]
    assert [shape.y0 for shape in plot.layout.shapes] == [1000.0, pytest.approx(900.0)]  # budget, limit
    assert plot.layout.xaxis.type == "log" and plot.layout.title.text == "Peak memory against batch size"


def test_write_files_writes_each_figure_as_html_and_png(tmp_path):
    figures = study_figures([_trial(0, 8, samples_per_second=800.0, peak_memory_bytes=MIB)], Budgets())
    written = write_files(figures, tmp_path / "figures")
    names = [path.name for path in written]
    assert names == [
        "throughput-vs-batch-size.html",
        "throughput-vs-batch-size.png",
        "peak-memory-vs-batch-size.html",
        "peak-memory-vs-batch-size.png",
    ]
    assert all(path.parent == tmp_path / "figures" for path in written)
    assert written[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = written[0].read_text()
    assert 'src="plotly.min.js"' in html  # plotly beside it: the page works offline
    assert (tmp_path / "figures" / "plotly.min.js").is_file()
