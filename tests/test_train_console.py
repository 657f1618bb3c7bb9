"""autotune.report._train_console: how ``autotune train`` shows a run: its start, a plain progress line off a
terminal and a bar on one, checkpoints, evaluations, notes, and the run record at the end, driven with set
figures; the output is captured from the module's console."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from autotune.knobs._config import TrainConfig
from autotune.report import _train_console
from autotune.report._console import describe_config
from autotune.report._train_console import (
    PLAIN_INTERVAL_SECONDS,
    TERMINAL_INTERVAL_SECONDS,
    TrainPrinter,
    print_run_record,
)
from autotune.training._run_plan import Deadline, Progress, RunLength, RunStart
from autotune.training._run_record import RunRecord

CONFIG = TrainConfig(batch_size=16, accumulation_steps=2)
STEPS = RunLength(stop="steps", target_steps=100, time_limit_seconds=None, schedule_steps=100, full_run_steps=200)
TIMED = RunLength(stop="time", target_steps=None, time_limit_seconds=120.0, schedule_steps=400, full_run_steps=None)


class Captured:
    def __init__(self, console: Console) -> None:
        self.console = console

    @property
    def text(self) -> str:
        return self.console.file.getvalue()

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()


def _capture(monkeypatch, **options: Any) -> Captured:
    console = Console(file=io.StringIO(), width=300, highlight=False, soft_wrap=True, color_system=None, **options)
    monkeypatch.setattr(_train_console, "console", console)
    return Captured(console)


@pytest.fixture
def out(monkeypatch) -> Captured:
    """The module's console writes plain text off a terminal (a pipe, a log file, CI)."""
    return _capture(monkeypatch)


@pytest.fixture
def terminal(monkeypatch) -> Captured:
    """The module's console is a terminal's: the progress bar renders (without colours)."""
    return _capture(monkeypatch, force_terminal=True)


def start(**changes: Any) -> RunStart:
    values = {
        "workload": "tests/workloads/tiny.py:workload",
        "device": "cpu",
        "config": CONFIG,
        "length": STEPS,
        "step": 0,
        "resumed_from": None,
        "unit": "samples",
        "dataset_size": 512,
        "measured_samples_per_second": 1000.0,
        "projected_seconds": 12.0,
        "deadline_seconds": None,
        "safety_margin_seconds": 0.0,
    }
    return RunStart(**{**values, **changes})


def progress(**changes: Any) -> Progress:
    values = {
        "step": 40,
        "total_steps": 100,
        "elapsed_seconds": 5.0,
        "time_limit_seconds": None,
        "epoch": 1.25,
        "samples_per_second": 960.0,
        "unit_per_second": 960.0,
        "unit": "samples",
        "loss": 0.123456,
        "eta_seconds": 7.5,
        "deadline": None,
    }
    return Progress(**{**values, **changes})


# --- The start ---------------------------------------------------------------------------------------


def test_train_printer_on_a_terminal_reports_every_terminal_interval(terminal):
    assert TrainPrinter().progress_interval_seconds == TERMINAL_INTERVAL_SECONDS


def test_train_printer_off_a_terminal_reports_every_plain_interval(out):
    assert TrainPrinter().progress_interval_seconds == PLAIN_INTERVAL_SECONDS


def test_train_printer_start_says_what_runs_where_and_what_was_measured(out):
    TrainPrinter().on_start(start())
    assert out.lines == [
        "training tests/workloads/tiny.py:workload on cpu: 100 steps",
        f"  {describe_config(CONFIG)}",
        "  measured 1000.0 samples/s; projected 12.0s for the run",
    ]


def test_train_printer_start_of_a_resumed_timed_run_with_a_deadline(out):
    shown = start(
        length=TIMED,
        step=250,
        resumed_from=Path("checkpoints/step-250"),
        deadline_seconds=3600.0,
        safety_margin_seconds=300.0,
    )
    TrainPrinter().on_start(shown)
    assert out.lines[0] == (
        f"training tests/workloads/tiny.py:workload on cpu: {TIMED.describe()}, "
        "resuming checkpoints/step-250 at step 250"
    )
    assert out.lines[2] == "  measured 1000.0 samples/s; projected 12.0s the time given"
    assert out.lines[3] == "  deadline 60.0m less a 5.0m margin"


def test_train_printer_start_in_the_workloads_unit_without_a_margin(out):
    TrainPrinter().on_start(start(unit="tokens", measured_unit_per_second=16000.0, deadline_seconds=600.0))
    assert out.lines[2:] == ["  measured 16000.0 tokens/s; projected 12.0s for the run", "  deadline 10.0m"]


def test_train_printer_start_without_a_measured_rate(out):
    TrainPrinter().on_start(start(measured_samples_per_second=None))
    assert len(out.lines) == 2


# --- Progress ------------------------------------------------------------------------------------------


def test_train_printer_progress_line_off_a_terminal(out):
    TrainPrinter().on_progress(progress())
    assert out.lines == ["step 40/100 (1.25 epochs) · 960.0 samples/s · loss 0.1235 · 5.0s elapsed, ETA 7.5s"]


def test_train_printer_progress_of_a_timed_run_without_a_rate_or_loss_yet(out):
    TrainPrinter().on_progress(progress(total_steps=None, unit_per_second=None, loss=None, eta_seconds=None))
    assert out.lines == ["step 40 (1.25 epochs) · - · 5.0s elapsed, ETA -"]


def test_train_printer_progress_against_the_deadline(out):
    printer = TrainPrinter()
    on_track = Deadline(
        deadline_seconds=600.0, limit_seconds=540.0, remaining_seconds=595.0, finish_seconds=300.0, on_track=True
    )
    printer.on_progress(progress(deadline=on_track))
    behind = dataclasses.replace(on_track, finish_seconds=700.0, on_track=False)
    printer.on_progress(progress(deadline=behind))
    unknown = dataclasses.replace(on_track, finish_seconds=None, on_track=None)
    printer.on_progress(progress(deadline=unknown))
    plain = "step 40/100 (1.25 epochs) · 960.0 samples/s · loss 0.1235 · 5.0s elapsed, ETA 7.5s"
    assert all(line.startswith(plain + " · ") for line in out.lines)
    assert out.lines[0].endswith(" · deadline 10.0m: 9.9m left, on track (full run ends at 5.0m, limit 9.0m)")
    assert out.lines[1].endswith(" · deadline 10.0m: 9.9m left, behind (full run ends at 11.7m, limit 9.0m)")
    assert out.lines[2].endswith(" · deadline 10.0m: 9.9m left")


def test_train_printer_progress_in_the_workloads_unit(out):
    TrainPrinter().on_progress(progress(unit="tokens", unit_per_second=15360.0))
    assert " · 15360.0 tokens/s · " in out.lines[0]


def test_train_printer_on_a_terminal_draws_a_bar_instead_of_lines(terminal):
    printer = TrainPrinter()
    printer.on_start(start())
    printer.on_progress(progress())
    printer.on_checkpoint(Path("checkpoints/step-40"), 40)  # the bar shows the run: no line for it
    printer.close()  # draws once more, then removes the bar
    text = terminal.text
    assert "step 40/100 (1.25 ep)" in text
    assert "960.0 samples/s · loss 0.1235" in text and "5.0s elapsed, ETA 7.5s" in text
    assert "step 40/100 (1.25 epochs)" not in text  # the plain line is for logs
    assert "checkpoint at step 40" not in text
    drawn = len(text)
    printer.close()  # closing twice draws nothing more
    assert len(terminal.text) == drawn


# --- Checkpoints, evaluations, notes ----------------------------------------------------------------------


def test_train_printer_checkpoint_evaluation_and_notes_off_a_terminal(out):
    printer = TrainPrinter()
    printer.on_checkpoint(Path("checkpoints/step-40"), 40)
    printer.on_evaluation({"step": 64, "epoch": 2.0, "metrics": {"accuracy": 0.91234, "loss": 0.25}})
    printer.on_evaluation({"step": 128, "epoch": 4.0, "metrics": {}})
    printer.on_note("the export's [recipe] is kept")
    printer.on_note("warning: the loss rose")
    assert out.lines == [
        "checkpoint at step 40: checkpoints/step-40",
        "evaluation at step 64 (epoch 2.00): accuracy 0.9123, loss 0.25",
        "evaluation at step 128 (epoch 4.00): no metrics",
        "note: the export's [recipe] is kept",
        "warning: the loss rose",
    ]


# --- The run record --------------------------------------------------------------------------------------


def record(**changes: Any) -> RunRecord:
    values = {
        "status": "finished",
        "signal": None,
        "workload": "tests/workloads/tiny.py:workload",
        "device": "cpu",
        "config": CONFIG.to_dict(),
        "stop": "steps",
        "steps": 100,
        "target_steps": 100,
        "time_limit_seconds": None,
        "schedule_steps": 100,
        "epochs": 6.25,
        "samples": 3200,
        "unit": "samples",
        "effective_batch_size": 32,
        "dataset_size": 512,
        "seconds": 14.0,
        "setup_seconds": 1.5,
        "warmup_seconds": 0.5,
        "checkpoint_seconds": 0.0,
        "evaluation_seconds": 0.0,
        "data_wait_fraction": 0.1,
        "resumes": 0,
        "samples_per_second": 950.0,
        "unit_per_second": 950.0,
        "overall_samples_per_second": 900.0,
        "overall_unit_per_second": 900.0,
        "measured_samples_per_second": 1000.0,
        "measured_unit_per_second": 1000.0,
        "throughput_ratio": 0.95,
        "projected_seconds": 12.0,
        "time_ratio": 14.0 / 12.0,
        "full_run_steps": 200,
        "full_run_projected_seconds": 24.0,
        "full_run_estimate_seconds": 28.0,
        "deadline_seconds": None,
        "safety_margin_seconds": None,
        "fits_deadline": None,
        "final_loss": 0.0123456,
        "evaluations": [],
        "checkpoint": None,
        "record_path": None,
        "study": "tiny",
        "trial": 3,
        "started_at": "2026-12-02T12:00:00+00:00",
        "finished_at": "2026-12-02T12:00:14+00:00",
    }
    return RunRecord(**{**values, **changes})


def test_print_run_record_of_a_finished_run(out):
    print_run_record(record())
    assert out.lines == [
        "finished 100 steps (6.25 epochs) in 14.0s (setup 1.5s)",
        "  throughput 950.0 samples/s steady, 0.95x the measured 1000.0 samples/s; 900.0 samples/s overall, "
        "warm-up included",
        "  time 14.0s against 12.0s projected for 100 steps (1.17x)",
        "  final loss 0.01235",
    ]


def test_print_run_record_of_an_interrupted_run(out):
    print_run_record(record(status="interrupted", signal="SIGTERM", steps=40, epochs=2.5))
    assert out.lines[0] == (
        "interrupted by SIGTERM after 40 steps (2.50 epochs) in 14.0s; continue it with the same command and --resume"
    )


def test_print_run_record_in_the_workloads_unit(out):
    print_run_record(
        record(
            unit="tokens",
            unit_per_second=15200.0,
            measured_unit_per_second=16000.0,
            overall_unit_per_second=14400.0,
        )
    )
    assert out.lines[1] == (
        "  throughput 15200.0 tokens/s (950.0 samples/s) steady, 0.95x the measured 16000.0 tokens/s; "
        "14400.0 tokens/s overall, warm-up included"
    )


def test_print_run_record_without_figures_to_compare(out):
    print_run_record(
        record(
            samples_per_second=None,
            projected_seconds=None,
            final_loss=None,
            throughput_ratio=None,
            overall_samples_per_second=None,
        )
    )
    assert out.lines == ["finished 100 steps (6.25 epochs) in 14.0s (setup 1.5s)"]
    print_run_record(record(throughput_ratio=None, overall_samples_per_second=None, projected_seconds=None))
    assert out.lines[2] == "  throughput 950.0 samples/s steady"


def test_print_run_record_against_the_deadline(out):
    print_run_record(record(deadline_seconds=60.0, safety_margin_seconds=6.0, fits_deadline=True))
    assert "  full run 28.0s at this run's pace: fits the deadline 60.0s less 6.0s" in out.lines
    full = record(steps=200, deadline_seconds=20.0, safety_margin_seconds=2.0, fits_deadline=False)
    print_run_record(full)  # the export's whole run: its own time, no pace to project from
    assert "  full run 28.0s: does not fit the deadline 20.0s less 2.0s" in out.lines


def test_print_run_record_names_the_last_evaluation_the_checkpoint_and_the_record(out):
    evaluations = [
        {"step": 50, "epoch": 3.1, "metrics": {"accuracy": 0.8}},
        {"step": 100, "epoch": 6.25, "metrics": {"accuracy": 0.9}},
    ]
    print_run_record(
        record(
            evaluations=evaluations,
            evaluation_seconds=0.4,
            checkpoint="checkpoints/final",
            record_path="runs/tiny-3.json",
        )
    )
    assert out.lines[-3:] == [
        "  evaluation at step 100: accuracy 0.9 (0.4s of evaluating in all)",
        "  checkpoint checkpoints/final",
        "  record runs/tiny-3.json",
    ]
