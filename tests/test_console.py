"""autotune.report._console: how the CLI shows a search, a range test, a verification, an export and a report,
driven with set trials and figures; the output is captured from the module's console."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import optuna
import pytest
from rich.console import Console

from autotune.export._export import Export
from autotune.knobs._config import TrainConfig
from autotune.knobs._device import DeviceInfo
from autotune.knobs._space import parse_space
from autotune.knobs._units import format_size
from autotune.report import _console
from autotune.report._console import (
    SearchPrinter,
    describe_config,
    noise_line,
    overhead_line,
    print_export,
    print_lr_find,
    print_report,
    print_search_result,
    print_verify_run,
)
from autotune.report._report import Report
from autotune.study._budget import Budgets
from autotune.study._lr_find import LRFindResult
from autotune.study._options import SearchPlan, SearchResult
from autotune.study._selection import Candidate, paired_lines

MiB = 1024**2
CONFIG = {"batch_size": 8}


class Captured:
    """What the module's console printed, as plain text."""

    def __init__(self, console: Console) -> None:
        self.console = console

    @property
    def text(self) -> str:
        return self.console.file.getvalue()

    @property
    def lines(self) -> list[str]:
        return self.text.splitlines()


@pytest.fixture
def out(monkeypatch) -> Captured:
    """The module's console writes plain text (no colours, no terminal) to a buffer."""
    console = Console(file=io.StringIO(), width=300, highlight=False, soft_wrap=True, color_system=None)
    monkeypatch.setattr(_console, "console", console)
    return Captured(console)


@pytest.fixture
def terminal(monkeypatch) -> Captured:
    """The module's console is a terminal's: live progress bars render (without colours) to a buffer."""
    console = Console(file=io.StringIO(), width=200, highlight=False, force_terminal=True, color_system=None)
    monkeypatch.setattr(_console, "console", console)
    return Captured(console)


def trials(*attrs: dict[str, Any]) -> list[optuna.trial.FrozenTrial]:
    """Finished trials numbered from 0, with these user attributes."""
    study = optuna.create_study(direction="maximize")
    for each in attrs:
        study.add_trial(optuna.trial.create_trial(value=each.get("samples_per_second") or 0.0, user_attrs=each))
    return study.trials


def ok(rate: float, **extra: Any) -> dict[str, Any]:
    return {"status": "ok", "samples_per_second": rate, "peak_memory_bytes": 3 * MiB, "config": CONFIG, **extra}


def plan(*, deadline_seconds: float | None = None, knobs: dict | None = None, storage: str = "sqlite:///s.db"):
    return SearchPlan(
        study_name="tiny",
        storage=storage,
        device=DeviceInfo(
            type="cpu", index=None, name="x86_64", total_memory_bytes=8 * 1024 * MiB, bf16=True, compile=True
        ),
        space=parse_space({"knobs": knobs if knobs is not None else {"batch_size": [8, 16], "num_workers": [0, 2]}}),
        requested_space={},
        baseline=TrainConfig(batch_size=8),
        budgets=Budgets(memory_budget_bytes=1024 * MiB, epochs=3, deadline_seconds=deadline_seconds),
        trial_timeout_seconds=120.0,
        notes=["the device has no CUDA: cuda-only values left out"],
    )


# --- describe_config ---------------------------------------------------------------------------------


def test_describe_config_of_the_defaults():
    assert describe_config(TrainConfig()) == "bs 32 · workers 0 · fp32 · max_lr 0.001"
    assert describe_config({}) == describe_config(TrainConfig())


def test_describe_config_shows_every_knob_set_and_the_workloads_own_last():
    config = {
        "batch_size": 64,
        "accumulation_steps": 2,
        "num_workers": 4,
        "prefetch_factor": 2,
        "persistent_workers": True,
        "precision": "bf16",
        "pin_memory": True,
        "channels_last": True,
        "compile": "default",
        "gradient_checkpointing": True,
        "max_lr": 0.01,
        "workload_knobs": {"model.width": 32, "dataset.max_length": 128},
    }
    parts = describe_config(config).split(" · ")
    assert parts[:2] == ["bs 64x2", "workers 4 (prefetch 2, persistent)"]
    assert sorted(parts[2:-3]) == sorted(["bf16", "pinned", "channels_last", "compile default", "checkpointing"])
    assert parts[-3] == "max_lr 0.01"
    assert sorted(parts[-2:]) == ["dataset.max_length 128", "model.width 32"]
    assert describe_config(TrainConfig.from_dict(config)) == describe_config(config)


def test_describe_config_shows_worker_options_only_with_workers():
    assert describe_config({"num_workers": 2}) == "bs 32 · workers 2 · fp32 · max_lr 0.001"
    assert describe_config({"num_workers": 2, "prefetch_factor": 8}).startswith("bs 32 · workers 2 (prefetch 8) · ")
    assert describe_config({"num_workers": 2, "persistent_workers": True}).startswith(
        "bs 32 · workers 2 (persistent) · "
    )


# --- SearchPrinter: the plan, one line per trial ------------------------------------------------------------


def test_search_printer_shows_the_plan(out):
    shown = plan(deadline_seconds=600.0)
    SearchPrinter(n_trials=5).on_plan(shown)
    assert out.lines == [
        "study tiny in sqlite:///s.db on cpu (x86_64)",
        "  note: the device has no CUDA: cuda-only values left out",
        f"  memory: feasible below {shown.budgets.describe_memory_limit()}",
        f"  full run: 3 epochs, feasible within {shown.budgets.describe_time_limit()}",
        "  trial timeout 2.0m",
        "  searching batch_size, num_workers",
        f"  baseline: {describe_config(TrainConfig(batch_size=8))}",
    ]


def test_search_printer_plan_without_a_deadline_or_anything_searched(out):
    SearchPrinter().on_plan(plan(knobs={"batch_size": [8]}))
    assert not any(line.startswith("  full run:") for line in out.lines)
    assert "  searching nothing (every knob fixed)" in out.lines


def test_search_printer_plan_hides_the_storage_password(out):
    SearchPrinter().on_plan(plan(storage="postgresql://tuner:hunter2@db.example/studies"))
    assert "hunter2" not in out.text
    assert out.lines[0].startswith("study tiny in postgresql://tuner:")


def test_search_printer_trial_line_of_an_ok_baseline_that_is_the_best(out):
    [trial] = trials(ok(1234.5, baseline=True))
    SearchPrinter().on_trial_end(trial, best=trial)
    peak = format_size(3 * MiB)
    assert out.lines == [
        f"#0   ok          1234.5 samples/s  peak {peak:>10}  {describe_config(CONFIG)} baseline",
        "      new best 1234.5 samples/s",
    ]


def test_search_printer_trial_line_in_the_workloads_unit(out):
    [trial] = trials(ok(100.0, unit_per_second=1600.0, unit="tokens"))
    SearchPrinter().on_trial_end(trial, best=None)
    assert out.lines == [
        f"#0   ok          1600.0 tokens/s  peak {format_size(3 * MiB):>10}  {describe_config(CONFIG)}"
    ]


def test_search_printer_failed_trial_line_leaves_the_figure_blank_and_gives_the_reason(out):
    first, failed = trials(ok(50.0), {"status": "oom", "reason": "peak memory 2.0 GiB [over] the budget"})
    printer = SearchPrinter()
    printer.on_trial_end(first, best=first)
    printer.on_trial_end(failed, best=first)
    assert out.lines[2:] == [
        "#1   oom      " + " " * len(f"{50.0:9.1f} samples/s") + "  peak          -  ",
        "      peak memory 2.0 GiB [over] the budget",  # markup in a reason is printed as it is
    ]
    assert out.lines[2].index("peak") == out.lines[0].index("peak")  # the columns line up


def test_search_printer_shows_the_trials_gradient_noise_scale(out):
    [trial] = trials(ok(10.0, noise_scale=512.0, noise_scale_stderr=40.0, noise={"value": 512.0, "groups": 6}))
    SearchPrinter().on_trial_end(trial, best=None)
    assert out.lines[1] == "      gradient noise scale 512 ± 40 samples (6 groups of micro-batches)"


def test_noise_line_without_a_standard_error_or_groups():
    assert noise_line({"noise_scale": 1234.5}) == "1.23e+03 samples"
    assert noise_line({"noise_scale": 80.0, "noise_scale_stderr": 12.5, "noise": {}}) == "80 ± 12 samples"


def test_search_printer_events_between_trials(out):
    printer = SearchPrinter()
    first, second = trials(ok(10.0), ok(20.0, config={"batch_size": 16, "accumulation_steps": 4}))
    printer.on_lr_find_start(first)
    printer.on_recipe_check_start(second, 0.01, "max_lr x sqrt(8)")
    printer.on_workload_check(plan())
    printer.on_note("waiting for cpu: [another] process")
    assert out.lines == [
        "running the LR range test on trial #0 ...",
        "checking trial #1 (effective batch 64, max_lr x sqrt(8)) against the recipe, both run to the recipe's "
        "progress ...",
        "checking the workload: its first training step at the baseline (batch_size 8) ...",
        "  note: waiting for cpu: [another] process",
    ]


def test_search_printer_off_a_terminal_shows_no_progress_bar(out):
    printer = SearchPrinter(n_trials=3)
    printer.on_plan(plan())
    printer.on_trial_start(1, TrainConfig(batch_size=16), is_baseline=False)
    printer.close()
    assert "\x1b" not in out.text and "trial #1" not in out.text


def test_search_printer_on_a_terminal_shows_the_trial_running_and_the_count(terminal):
    printer = SearchPrinter(n_trials=3, timeout_seconds=600)
    printer.on_plan(plan())
    printer.on_trial_start(0, TrainConfig(batch_size=8), is_baseline=True)
    [first] = trials(ok(10.0))
    printer.on_trial_end(first, best=None)
    printer.on_trial_start(1, TrainConfig(batch_size=16), is_baseline=False)
    printer.close()  # renders once more, then removes the bar
    assert f"trial #1: {describe_config(TrainConfig(batch_size=16))}" in terminal.text
    assert "1/3" in terminal.text and "of 10.0m" in terminal.text
    printed = len(terminal.text)
    printer.on_trial_start(2, TrainConfig(batch_size=32), is_baseline=False)  # no bar any more: nothing drawn
    assert len(terminal.text) == printed


def test_search_printer_stops_the_bar_before_the_range_test_prints(terminal):
    printer = SearchPrinter(n_trials=3)
    printer.on_plan(plan())
    [trial] = trials(ok(10.0))
    printer.on_lr_find_start(trial)
    printed = len(terminal.text)
    printer.on_trial_start(1, TrainConfig(batch_size=16), is_baseline=False)
    printer.close()
    assert len(terminal.text) == printed
    assert terminal.text.rstrip().endswith("running the LR range test on trial #0 ...")


# --- The range test, the search's result, verification, the export ------------------------------------------


def lr_result(**changes: Any) -> LRFindResult:
    values = {
        "config": CONFIG,
        "lrs": [1e-4, 1e-3, 1e-2, 1e-1, 1.0],
        "losses": [1.0, 0.9, 0.5, 0.7, 9.0],
        "smoothed": [1.0, 0.95, 0.7, 0.7, 3.0],
        "stopped_early": False,
        "suggestion": 0.003,
        "lr_at_min_loss": 0.01,
        "lr_steepest": 0.003,
        "centre_lr": 0.001,
        "trial": 2,
    }
    return LRFindResult(**{**values, **changes})


def test_print_lr_find_gives_the_curve_the_suggestion_and_the_picture(out):
    print_lr_find(lr_result(), Path("lr_find.png"))
    assert out.lines == [
        "LR range test on trial #2: minimum smoothed loss at lr 0.01, steepest descent at 0.003 "
        "(5 steps, ran to the end of its range)",
        "suggested max_lr 0.003 for OneCycle",
        "curve drawn in lr_find.png",
    ]


def test_print_lr_find_says_what_its_check_decided(out):
    print_lr_find(lr_result(stopped_early=True, check={"kept": True, "reason": "0.003 reached lower loss"}))
    print_lr_find(lr_result(check={"kept": False, "reason": "0.003 lost", "scaled_base_lr": 0.0008}))
    assert "(5 steps, stopped when the loss blew up)" in out.lines[0]
    assert out.lines[2] == "check: 0.003 reached lower loss (kept)"
    assert out.lines[5] == "check: 0.003 lost (not kept: max_lr 0.0008 will be exported)"


def search_result(**changes: Any) -> SearchResult:
    baseline, best, _ = trials(ok(100.0, baseline=True), ok(250.0, config={"batch_size": 32}), {"status": "oom"})
    values = {
        "study_name": "tiny",
        "storage": "sqlite:///s.db",
        "trials_run": 3,
        "best": best,
        "baseline": baseline,
        "status_counts": {"ok": 2, "oom": 1},
        "seconds": 95.0,
    }
    return SearchResult(**{**values, **changes})


def test_print_search_result_names_the_best_against_the_baseline(out):
    print_search_result(search_result(notes=["the [recipe] check kept batch 32"]))
    assert out.lines == [
        "",
        "3 trial(s) run; study tiny now has: 2 ok, 1 oom",
        "best: trial #1 at 250.0 samples/s, 2.50x the baseline (trial #0)",
        f"  {describe_config({'batch_size': 32})}",
        "note: the [recipe] check kept batch 32",
        "the search took 1.6m, the range test and re-measurement included",
        "export it with: autotune export-best --study tiny",
    ]


def test_print_search_result_with_the_side_by_side_figures_and_the_range_test(out):
    paired = {
        "trial": 1,
        "baseline_trial": 0,
        "speedup": 2.4,
        "noise": 0.03,
        "samples_per_second": 240.0,
        "rounds": [{"trial": 1, "samples_per_second": [1.0, 1.0, 1.0]}],
    }
    print_search_result(search_result(paired=paired, lr_find=lr_result()))
    text = out.lines
    # the side-by-side rounds' figure, not the single trial's that won the ranking
    best = text.index(
        "best: trial #1 at 240.0 samples/s side by side, 2.40x the baseline (trial #0); its own trial read 250.0"
    )
    assert text[best + 2 : best + 2 + len(paired_lines(paired))] == paired_lines(paired)
    assert "suggested max_lr 0.003 for OneCycle" in text


def test_print_search_result_without_a_feasible_trial(out):
    print_search_result(search_result(best=None, status_counts={"oom": 3}))
    assert out.lines == ["", "3 trial(s) run; study tiny now has: 3 oom", "no feasible trial yet"]


def test_print_search_result_without_a_measured_baseline_gives_no_speedup(out):
    failed_baseline, best = trials({"status": "error", "baseline": True}, ok(250.0))
    print_search_result(search_result(best=best, baseline=failed_baseline))
    assert "best: trial #1 at 250.0 samples/s" in out.lines


def test_print_verify_run(out):
    attrs = ok(100.0)
    print_verify_run(0, 3, Candidate(0, attrs, 100.0, 0.01, MiB, is_baseline=True), 123.45)
    print_verify_run(2, 3, Candidate(4, attrs, 100.0, 0.01, MiB), None)
    assert out.lines == [
        "  verify round 1/3: trial #0 (baseline) 123.5 samples/s",
        "  verify round 3/3: trial #4 failed",
    ]


def export_document(**full_run: Any) -> dict[str, Any]:
    return {
        "config": TrainConfig(batch_size=16).to_dict(),
        "measured": {
            "samples_per_second": 1234.5,
            "peak_memory_bytes": 2 * MiB,
            "warmup_seconds": 2.0,
            "effective_batch_size": 16,
        },
        "provenance": {"study": "tiny", "trial": 3},
        "full_run": {"fits_deadline": None, "projected_seconds": 300.0, **full_run},
        "payoff": {"line": "the search's 2.0m pay off after 1 full run"},
        "selection": {"explanation": ["trial #3 is the fastest [beyond] the noise"]},
    }


def test_print_export_explains_the_choice_and_where_it_was_written(out):
    print_export(Export(export_document(fits_deadline=True), Path("best.yaml")))
    assert out.lines == [
        "trial #3 is the fastest [beyond] the noise",
        f"trial #3 of study tiny: 1234.5 samples/s, peak {format_size(2 * MiB)}, warm-up 2.0s, effective batch 16",
        f"  {describe_config({'batch_size': 16})}",
        "  full run: 5.0m, fits the deadline",
        "the search's 2.0m pay off after 1 full run",
        "written to best.yaml",
    ]


def test_print_export_without_a_deadline_or_a_file(out):
    print_export(Export(export_document(), None))
    assert not any("full run:" in line or line.startswith("written to") for line in out.lines)
    print_export(Export(export_document(fits_deadline=False), None))
    assert "  full run: 5.0m, does not fit the deadline" in out.lines


# --- The report ------------------------------------------------------------------------------------------------


def test_overhead_line():
    overhead = {"median_fraction": 0.25, "median_seconds": 1.0, "median_wall_seconds": 4.0, "trials": 6}
    assert overhead_line(overhead) == (
        "trial overhead (wall time outside the timed windows and evaluation, compile aside): median 25% of a "
        "trial, 1.00s of 4.00s, over 6 trials"
    )
    assert overhead_line({**overhead, "median_startup_seconds": 0.5}).endswith(
        "1.00s of 4.00s (process start and imports 0.50s), over 6 trials"
    )


def row(trial: int, status: str = "ok", **values: Any) -> dict[str, Any]:
    return {
        "trial": trial,
        "baseline": False,
        "status": status,
        "feasible": status == "ok",
        "unit_per_second": None,
        "speedup": None,
        "throughput_cv": None,
        "overhead_fraction": None,
        "peak_memory_bytes": None,
        "projected_full_run_seconds": None,
        "config": CONFIG,
        **values,
    }


def report(**changes: Any) -> Report:
    values = {
        "study": "tiny",
        "status_counts": {"ok": 2, "slow": 1},
        "rows": [
            row(
                1, unit_per_second=250.0, speedup=2.5, throughput_cv=0.012, overhead_fraction=0.3, peak_memory_bytes=MiB
            ),
            row(0, baseline=True, unit_per_second=100.0, speedup=1.0, projected_full_run_seconds=600.0),
            row(2, "slow", config={}),
            row(3, feasible=False, unit_per_second=300.0),
        ],
        "importances": {},
        "importance_note": None,
        "memory": "feasible below 900.0 MiB",
        "lr_find": [],
        "plots": [],
    }
    return Report(**{**values, **changes})


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("┃│").split("┃" if "┃" in line else "│")]


def test_print_report_tables_the_trials(out):
    print_report(report())
    lines = out.lines
    assert lines[0] == "study tiny: 2 ok, 1 slow"
    header = next(line for line in lines if "status" in line)
    assert cells(header) == [
        "#",
        "status",
        "samples/s",
        "speedup",
        "cv",
        "overhead",
        "peak memory",
        "full run",
        "config",
    ]
    rows = [cells(line) for line in lines if line.startswith("│")]
    assert rows == [
        ["1", "ok", "250.0", "2.50x", "1.2%", "30%", format_size(MiB), "-", describe_config(CONFIG)],
        ["0 base", "ok", "100.0", "1.00x", "-", "-", "-", "10.0m", describe_config(CONFIG)],
        ["2", "slow", "-", "-", "-", "-", "-", "-", ""],
        ["3", "ok (infeasible)", "300.0", "-", "-", "-", "-", "-", describe_config(CONFIG)],
    ]
    assert "memory: feasible below 900.0 MiB" in lines


def test_print_report_in_the_workloads_unit(out):
    print_report(report(unit="tokens"))
    assert "tokens/s" in next(line for line in out.lines if "status" in line)


def test_print_report_lines_below_the_table(out):
    paired = {"trial": 1, "baseline_trial": 0, "speedup": 2.4, "noise": 0.03, "rounds": [{"samples_per_second": [1.0]}]}
    overhead = {"median_fraction": 0.25, "median_seconds": 1.0, "median_wall_seconds": 4.0, "trials": 6}
    print_report(
        report(
            overhead=overhead,
            paired=paired,
            importances={"batch_size": 0.7, "num_workers": 0.3},
            noise_scale={"line": "512 ± 40 samples over 4 trials"},
            lr_find=[{"trial": 2, "suggestion": 0.0031}],
            recipe_checks=[
                {"kept": True, "reason": "batch 32 reached the recipe's loss"},
                {"kept": False, "reason": "no"},
            ],
            full_runs=[{"trial": 1, "seconds": 12.0, "steps": 50}],
            plots=["plots/throughput.html"],
        )
    )
    lines = out.lines
    below = lines[lines.index("memory: feasible below 900.0 MiB") + 1 :]
    assert below == [
        overhead_line(overhead),
        *paired_lines(paired),
        "knobs that mattered (fANOVA importance of samples/s): batch_size 70%, num_workers 30%",
        "gradient noise scale: 512 ± 40 samples over 4 trials",
        "LR range test on trial #2: suggested max_lr 0.0031",
        "recipe check (kept): batch 32 reached the recipe's loss",
        "recipe check (not kept): no",
        "run of 50 steps of trial #1: actual 12.0s",
        "wrote plots/throughput.html",
    ]


def test_print_report_says_why_there_are_no_importances(out):
    print_report(report(importance_note="parameter importances need at least 3 finished trials, the study has 2"))
    assert out.lines[-1] == "parameter importances need at least 3 finished trials, the study has 2"
