"""`autotune lr-find` and `autotune export-best --prefer` through click's CliRunner, on a finished tiny study."""

from __future__ import annotations

import re

import optuna
import pytest
from conftest import error_line, run_cli, workload_spec

from autotune.runner import MeasureSettings
from autotune.study._loop import search
from autotune.study._options import SearchOptions

FAST = MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_window_steps=20)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished study of tiny: the baseline (batch 8) and batch 256, the fastest."""
    folder = tmp_path_factory.mktemp("cli_lr")
    space = folder / "space.yaml"
    space.write_text("effective_batch: free\nknobs: {batch_size: [8, 256]}\n")
    storage = f"sqlite:///{folder / 'studies' / 'cli_lr.db'}"
    options = SearchOptions(
        workload=workload_spec(),
        storage=storage,
        space=space,
        n_trials=1,
        measure=FAST,
        seed=0,
        slow_fraction=0.0,
        lr_find=False,
    )
    search(options)
    optuna.load_study(study_name="tiny", storage=storage).enqueue_trial({"batch_size": 256})
    search(options)
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert [t.user_attrs["status"] for t in study.trials] == ["ok", "ok"]
    return {"storage": storage, "folder": folder}


@pytest.fixture(scope="module")
def lr_found(finished):
    """`autotune lr-find --storage ... --plot .../c.png` on the study's fastest trial."""
    picture = finished["folder"] / "c.png"
    result = run_cli("lr-find", "--storage", finished["storage"], "--plot", str(picture))
    return {"result": result, "picture": picture}


def test_cli_lr_find_prints_the_suggestion(lr_found):
    result = lr_found["result"]
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert re.fullmatch(
        r"LR range test on trial #1: minimum smoothed loss at lr \S+, steepest descent at \S+ "
        r"\(\d+ steps, (stopped when the loss blew up|ran to the end of its range)\)",
        lines[0],
    ), lines[0]
    assert re.fullmatch(r"suggested max_lr \S+ for OneCycle", lines[1]), lines[1]
    assert re.fullmatch(
        r"check: max_lr \S+ (ended at loss \S+ after 40 steps of the exported schedule, \S.*|diverged in 40 steps of "
        r"the exported schedule) \((kept|not kept: max_lr \S+ will be exported)\)",
        lines[2],
    ), lines[2]
    assert lines[3] == f"curve drawn in {lr_found['picture']}"
    assert "suggested max_lr" in result.output


def test_cli_lr_find_writes_the_png(lr_found):
    data = lr_found["picture"].read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000


def test_cli_lr_find_stores_the_result_with_the_study(lr_found, finished):
    study = optuna.load_study(study_name="tiny", storage=finished["storage"])
    stored = study.user_attrs["lr_find"]
    assert list(stored) == ["1"]
    suggestion = re.search(r"suggested max_lr (\S+) for OneCycle", lr_found["result"].output).group(1)
    assert f"{stored['1']['suggestion']:.3g}" == suggestion
    assert stored["1"]["config"]["batch_size"] == 256


def test_cli_lr_find_unknown_trial_is_oneerror_line(finished):
    result = run_cli(
        "lr-find", "--storage", finished["storage"], "--trial", "999", "--plot", str(finished["folder"] / "never.png")
    )
    assert error_line(result) == "Error: study 'tiny' has no trial #999 with a config"
    assert not (finished["folder"] / "never.png").exists()


def test_cli_lr_find_too_few_steps_is_a_usage_error(finished):
    result = run_cli("lr-find", "--storage", finished["storage"], "--steps", "4")
    assert result.exit_code == 2
    assert "Error: Invalid value for '--steps': 4 is not in the range x>=5." in result.output.splitlines()


def test_cli_lr_find_help_has_examples():
    result = run_cli("lr-find", "--help")
    assert result.exit_code == 0
    assert result.output.startswith("Usage: autotune lr-find [OPTIONS]")
    assert re.search(r"^\s*Examples:$", result.output, re.MULTILINE)
    examples = [line for line in result.output.split("Examples:")[1].splitlines() if line.strip()]
    assert examples and all(line.strip().startswith("autotune lr-find") for line in examples)
    for option in ("--study", "--storage", "--trial", "--lr-scaling", "--steps", "--plot"):
        assert option in result.output


@pytest.mark.parametrize("prefer", ["memory", "balanced"])
def test_cli_export_best_prefer_explains_the_choice_first(finished, prefer):
    out = finished["folder"] / f"best-{prefer}.yaml"
    result = run_cli("export-best", "--storage", finished["storage"], "--prefer", prefer, "--out", str(out))
    assert result.exit_code == 0, result.output
    first = result.output.splitlines()[0]
    assert first.startswith(f"{prefer}: trial #"), first
    assert out.exists()
    assert f"prefer: {prefer}" in out.read_text()


def test_cli_export_best_prefer_memory_names_the_leanest_within_five_percent(finished):
    out = finished["folder"] / "best-memory-line.yaml"
    result = run_cli("export-best", "--storage", finished["storage"], "--prefer", "memory", "--out", str(out))
    assert re.fullmatch(
        r"memory: trial #\d+ uses the least memory \(\d+\.\d (B|KiB|MiB|GiB)\) among configs within 5% of the fastest",
        result.output.splitlines()[0],
    ), result.output


def test_cli_export_best_unknown_preference_is_a_usage_error(finished):
    result = run_cli("export-best", "--storage", finished["storage"], "--prefer", "cheapest")
    assert result.exit_code == 2
    assert "Invalid value for '--prefer'" in result.output
