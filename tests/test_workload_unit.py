"""A token workload's throughput is shown in tokens/s everywhere: the live trial lines, the search's
summary, report (and --json), the dashboard's note and figure, export-best's lines and payoff, and
train's figures against the measured one."""

from __future__ import annotations

import json
import re

import optuna
import pytest
import yaml
from conftest import run_cli, workload_spec

from autotune.knobs._units import format_size
from autotune.report._console import SearchPrinter, console, describe_config, print_search_result
from autotune.runner import MeasureSettings
from autotune.study._figures import throughput_figure, to_plotly
from autotune.study._loop import search
from autotune.study._options import SearchOptions

FAST = MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_window_steps=20)  # conftest's fast_measure


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    """A two-trial search of tests/workloads/tokens.py (16 tokens a sample), its printed output and trials."""
    folder = tmp_path_factory.mktemp("tokens")
    space = folder / "space.yaml"
    space.write_text("effective_batch: free\nknobs: {batch_size: [8, 32]}\n")
    storage = f"sqlite:///{folder / 'studies' / 'tokens.db'}"
    options = SearchOptions(
        workload=workload_spec(file="tokens.py"),
        storage=storage,
        space=space,
        n_trials=2,
        measure=FAST,
        seed=0,
        slow_fraction=0.0,
        lr_find=False,
    )
    printer = SearchPrinter(options.n_trials)
    with console.capture() as captured:
        result = search(options, printer)
        printer.close()
        print_search_result(result)
    study = optuna.load_study(study_name="tokens", storage=storage)
    assert [t.user_attrs["status"] for t in study.trials] == ["ok", "ok"]
    return {"output": captured.get(), "result": result, "study": study, "storage": storage, "folder": folder}


def test_token_trials_record_tokens_per_second(tokens):
    for trial in tokens["study"].trials:
        attrs = trial.user_attrs
        assert attrs["unit"] == "tokens"
        assert attrs["unit_per_second"] == pytest.approx(16 * attrs["samples_per_second"])


def test_search_lines_show_tokens_per_second(tokens):
    lines = tokens["output"].splitlines()
    for trial in tokens["study"].trials:
        attrs = trial.user_attrs
        line = (
            f"#{trial.number:<3} ok       {attrs['unit_per_second']:9.1f} tokens/s  "
            f"peak {format_size(attrs['peak_memory_bytes']):>10}  {describe_config(attrs['config'])}"
        )
        assert line + (" baseline" if trial.number == 0 else "") in lines
    assert f"      new best {tokens['study'].trials[0].user_attrs['unit_per_second']:.1f} tokens/s" in lines
    assert "samples/s" not in tokens["output"]


def test_search_summary_shows_tokens_per_second(tokens):
    best, baseline, paired = tokens["result"].best, tokens["study"].trials[0], tokens["result"].paired
    rate = best.user_attrs["unit_per_second"]
    if paired is not None and paired["trial"] == best.number:  # the side-by-side figure, in tokens
        side = paired["samples_per_second"] * rate / best.user_attrs["samples_per_second"]
        line = (
            f"best: trial #{best.number} at {side:.1f} tokens/s side by side, {paired['speedup']:.2f}x the "
            f"baseline (trial #0); its own trial read {rate:.1f}"
        )
    else:
        speedup = rate / baseline.user_attrs["unit_per_second"]
        line = f"best: trial #{best.number} at {rate:.1f} tokens/s, {speedup:.2f}x the baseline (trial #0)"
    assert line in tokens["output"].splitlines()


def test_report_table_shows_tokens_per_second(tokens):
    result = run_cli("report", "--storage", tokens["storage"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if "status" in line)
    assert [cell.strip() for cell in header.strip("┃").split("┃")][:4] == ["#", "status", "tokens/s", "speedup"]
    baseline_rate = tokens["study"].trials[0].user_attrs["unit_per_second"]
    for trial in tokens["study"].trials:
        rate = trial.user_attrs["unit_per_second"]
        number = f"{trial.number} base" if trial.number == 0 else f"{trial.number}"
        row = next(line for line in lines if line.startswith("│") and line.strip("│ ").startswith(number))
        cells = [cell.strip() for cell in row.strip("│").split("│")]
        assert cells[:4] == [number, "ok", f"{rate:.1f}", f"{rate / baseline_rate:.2f}x"]
    assert "samples/s" not in result.output


def test_report_json_has_the_unit_beside_samples(tokens):
    result = run_cli("report", "--storage", tokens["storage"], "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["unit"] == "tokens"
    for row in report["rows"]:
        attrs = tokens["study"].trials[row["trial"]].user_attrs
        assert row["unit"] == "tokens"
        assert row["unit_per_second"] == attrs["unit_per_second"]
        assert row["samples_per_second"] == attrs["samples_per_second"]


def test_study_note_shows_tokens_per_second(tokens):
    import optuna_dashboard

    note = optuna_dashboard.get_note(tokens["study"])
    winner = next(line for line in note.splitlines() if line.startswith("**Winner:**"))
    number = int(re.match(r"\*\*Winner:\*\* trial #(\d+), ", winner).group(1))  # the baseline, unless beaten
    rate = tokens["study"].trials[number].user_attrs["unit_per_second"]
    baseline_rate = tokens["study"].trials[0].user_attrs["unit_per_second"]
    speedup = f"**{rate / baseline_rate:.2f}x** the baseline (trial #0, {baseline_rate:.1f} tokens/s)"
    assert winner == f"**Winner:** trial #{number}, {rate:.1f} tokens/s, {speedup}"


def test_throughput_figure_is_in_tokens_per_second(tokens):
    trials = tokens["study"].trials
    figure = throughput_figure(trials)
    assert figure.y_title == "tokens/s"
    assert sorted(y for series in figure.series for y in series.y) == sorted(
        t.user_attrs["unit_per_second"] for t in trials
    )
    assert to_plotly(figure).layout.yaxis.title.text == "tokens/s"


def test_export_best_lines_show_tokens_per_second(tokens):
    out = tokens["folder"] / "best.yaml"
    result = run_cli("export-best", "--storage", tokens["storage"], "--out", str(out))
    assert result.exit_code == 0, result.output
    document = yaml.safe_load(out.read_text())
    trial = document["provenance"]["trial"]
    # The trial's figure, or its side-by-side re-measurement at the end of the search.
    rate = document["measured"]["unit_per_second"]
    attrs = tokens["study"].trials[trial].user_attrs
    paired = tokens["study"].user_attrs.get("paired") or {}
    if paired.get("trial") != trial:
        assert rate == attrs["unit_per_second"]
    else:
        assert rate == pytest.approx(
            paired["samples_per_second"] * attrs["unit_per_second"] / attrs["samples_per_second"]
        )
    lines = result.output.splitlines()
    assert any(line.startswith(f"trial #{trial} of study tokens: {rate:.1f} tokens/s, peak ") for line in lines)
    payoff = document["payoff"]
    assert (payoff["unit"], payoff["unit_per_second"]) == ("tokens", rate)
    if payoff["samples_factor"] == 1.0:
        assert payoff["line"].startswith(
            f"{payoff['speedup_over_baseline']:.2f}x the baseline at {rate:.1f} tokens/s: the full run projects "
        )
    else:  # a changed effective batch: the samples it takes to the recipe's progress are stated beside
        assert payoff["line"].startswith(
            f"{payoff['speedup_over_baseline']:.2f}x the baseline's throughput at {rate:.1f} tokens/s, with "
            f"{payoff['samples_factor']:.3g}x its samples to the recipe's progress: the full run projects "
        )
    assert payoff["line"] in lines


def test_train_shows_tokens_per_second_against_the_measured(tokens, tmp_path):
    out = tmp_path / "best.yaml"
    assert run_cli("export-best", "--storage", tokens["storage"], "--out", str(out)).exit_code == 0
    measured = yaml.safe_load(out.read_text())["measured"]["unit_per_second"]
    result = run_cli(
        "train",
        "--config",
        str(out),
        "--steps",
        "3",
        "--checkpoint-dir",
        str(tmp_path / "ckpt"),
        "--storage",
        tokens["storage"],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[2].startswith(f"  measured {measured:.1f} tokens/s; projected ")
    record = json.loads((tmp_path / "ckpt" / "run_record.json").read_text())
    steady, overall = record["unit_per_second"], record["overall_unit_per_second"]
    assert record["measured_unit_per_second"] == measured
    assert (
        f"  throughput {steady:.1f} tokens/s ({record['samples_per_second']:.1f} samples/s) steady, "
        f"{steady / measured:.2f}x the measured {measured:.1f} tokens/s; {overall:.1f} tokens/s overall, warm-up "
        "included"
    ) in lines
    report = run_cli("report", "--storage", tokens["storage"]).output.splitlines()
    trial = record["trial"]
    assert any(
        line.startswith(f"run of 3 steps of trial #{trial}: ")
        and f"; {steady:.1f} tokens/s, {steady / measured:.2f}x the measured {measured:.1f}" in line
        for line in report
    )


def test_full_run_line_shows_the_workload_unit():
    from autotune.training._run_record import full_run_line

    actual = {
        "trial": 2,
        "seconds": 66.0,
        "projected_seconds": 60.0,
        "time_ratio": 1.1,
        "samples_per_second": 430.0,
        "measured_samples_per_second": 450.0,
        "throughput_ratio": 430.0 / 450.0,
        "unit_per_second": 6880.0,
        "measured_unit_per_second": 7200.0,
        "unit": "tokens",
        "steps": 1000,
        "full_run": True,
    }
    assert full_run_line(actual) == (
        "full run of trial #2: projected 60.0s, actual 66.0s (1.10x); 6880.0 tokens/s, 0.96x the measured 7200.0"
    )
    older = {key: value for key, value in actual.items() if key != "measured_unit_per_second"}  # recorded before
    assert full_run_line(older).endswith("; 430.0 samples/s, 0.96x the measured 450.0")


@pytest.mark.parametrize(
    ("unit", "figure"),
    [
        ({"unit": "tokens", "unit_per_second": 12859.0}, " at 12859.0 tokens/s"),
        ({"unit": "samples", "unit_per_second": 803.7}, " at 803.7 samples/s"),
        ({}, ""),
    ],  # an export written before the payoff had its unit
)
def test_payoff_line_shows_the_rate_in_the_workload_unit(unit, figure):
    from autotune.export._export import payoff_line

    payoff = {
        "speedup_over_baseline": 1.35,
        "projected_seconds": 180.0,
        "baseline_projected_seconds": 243.0,
        "saved_seconds": 63.0,
        "search_seconds": 76.0,
        **unit,
    }
    assert payoff_line(payoff) == (
        f"1.35x the baseline{figure}: the full run projects 3.0m instead of 4.0m, saving 63.0s for a 76.0s search "
        "(does not pay for itself on one run)"
    )
