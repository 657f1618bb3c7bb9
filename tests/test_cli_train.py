"""autotune train through the command line: the record it prints, one-line errors, SIGTERM and SIGINT."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import error_line, run_cli, workload_spec

from autotune.knobs._config import TrainConfig

TINY = workload_spec()
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    TrainConfig(batch_size=16, max_lr=0.01).save(path)
    return path


def train_args(tmp_path: Path, config: Path, *extra: str) -> list[str]:
    return ["train", "--config", str(config), "--workload", TINY, "--checkpoint-dir", str(tmp_path / "ckpt"), *extra]


def test_cli_train_prints_the_run_record_and_writes_it(tmp_path, config_file):
    result = run_cli(*train_args(tmp_path, config_file, "--steps", "5", "--out", str(tmp_path / "run.json")))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"training {TINY} on cpu: 5 steps"
    assert lines[1] == "  bs 16 · workers 0 · fp32 · max_lr 0.01"
    assert any(line.startswith("finished 5 steps (0.16 epochs) in ") for line in lines)
    assert f"  checkpoint {tmp_path / 'ckpt' / 'step_00000005.pt'}" in lines
    assert f"  record {tmp_path / 'run.json'}" in lines
    assert json.loads((tmp_path / "run.json").read_text())["steps"] == 5


def test_cli_train_off_a_terminal_prints_plain_progress_lines(tmp_path, config_file, monkeypatch):
    monkeypatch.setattr("autotune.report._train_console.PLAIN_INTERVAL_SECONDS", 0.0)
    result = run_cli(*train_args(tmp_path, config_file, "--steps", "3"))
    assert result.exit_code == 0, result.output
    progress = [line for line in result.output.splitlines() if line.startswith("step ")]
    assert [line.split(" (")[0] for line in progress] == ["step 1/3", "step 2/3", "step 3/3"]
    assert " samples/s · loss " in progress[-1] and "elapsed, ETA" in progress[-1]


def test_cli_train_resume_continues_with_the_same_command(tmp_path, config_file):
    assert run_cli(*train_args(tmp_path, config_file, "--steps", "2")).exit_code == 0
    result = run_cli(*train_args(tmp_path, config_file, "--steps", "2", "--resume"))
    assert result.exit_code == 0, result.output
    assert f"resuming {tmp_path / 'ckpt' / 'step_00000002.pt'} at step 2" in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--steps", "3", "--epochs", "1"],
            "Error: give one of --epochs, --steps and --time, not --epochs and --steps",
        ),
        (["--time", "5x"], "Error: --time: unknown unit 'x' in '5x' (use s, m, h or d)"),
        (
            ["--checkpoint-every", "soon"],
            "Error: --checkpoint-every: cannot read 'soon' as a duration (examples: 90s, 10m, 2h, 1h30m)",
        ),
        (["--device", "tpu"], "Error: --device: expected auto, cpu, cuda or cuda:N, got 'tpu'"),
    ],
)
def test_cli_train_bad_option_is_one_error_line(tmp_path, config_file, extra, message):
    assert error_line(run_cli(*train_args(tmp_path, config_file, *extra))) == message
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steps", "0"], "'--steps': 0 is not in the range x>=1."),
        (["--epochs", "0"], "'--epochs': 0.0 is not in the range 0<x<inf."),
        (["--epochs", "inf"], "'--epochs': inf is not in the range 0<x<inf."),  # no run without end
    ],
)
def test_cli_train_length_out_of_range_is_refused_by_its_declaration(tmp_path, config_file, extra, message):
    result = run_cli(*train_args(tmp_path, config_file, *extra))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.splitlines()[-1] == f"Error: Invalid value for {message}"
    assert not (tmp_path / "ckpt").exists()


def test_cli_train_missing_config_is_one_error_line(tmp_path):
    missing = tmp_path / "best.yaml"
    assert error_line(run_cli("train", "--config", str(missing), "--checkpoint-dir", str(tmp_path / "ckpt"))) == (
        f"Error: {missing}: cannot read (No such file or directory)"
    )


def test_cli_train_invalid_config_is_one_error_line(tmp_path):
    bad = tmp_path / "best.yaml"
    bad.write_text("config: {batch_size: 0}\n")
    assert error_line(run_cli("train", "--config", str(bad), "--checkpoint-dir", str(tmp_path / "ckpt"))) == (
        f"Error: {bad}: batch_size must be >= 1, got 0"
    )


def test_cli_train_workload_that_fails_to_import_is_one_error_line(tmp_path, config_file):
    spec = workload_spec(file="broken_import.py")
    line = error_line(
        run_cli(
            "train",
            "--config",
            str(config_file),
            "--workload",
            spec,
            "--steps",
            "2",
            "--checkpoint-dir",
            str(tmp_path / "ckpt"),
        )
    )
    assert line.startswith(f"Error: workload {spec!r}: ")


def test_cli_train_resume_with_another_config_is_one_error_line(tmp_path, config_file):
    assert run_cli(*train_args(tmp_path, config_file, "--steps", "2")).exit_code == 0
    other = tmp_path / "other.yaml"
    TrainConfig(batch_size=16, max_lr=0.02).save(other)
    assert error_line(run_cli(*train_args(tmp_path, other, "--resume"))) == (
        f"Error: {tmp_path / 'ckpt' / 'step_00000002.pt'} was saved with max_lr 0.01, the config has 0.02; "
        "--resume continues a run with the config it started with"
    )


def start_training(tmp_path: Path, config: Path) -> subprocess.Popen:
    """`python -m autotune.cli train` on a run far too long to finish, once it has started its loop."""
    process = subprocess.Popen(
        [sys.executable, "-m", "autotune.cli", *train_args(tmp_path, config, "--steps", "10000000")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("training "):  # printed once the signal handlers are in place
            break
    time.sleep(0.5)  # a few steps in
    return process


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_cli_train_signal_saves_a_checkpoint_and_exits_with_its_code(tmp_path, config_file, signum, code):
    process = start_training(tmp_path, config_file)
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == code, output
    name = signal.Signals(signum).name
    assert f"interrupted by {name} after " in output and "continue it with the same command and --resume" in output
    saved = sorted((tmp_path / "ckpt").glob("step_*.pt"))
    assert len(saved) == 1
    record = json.loads((tmp_path / "ckpt" / "run_record.json").read_text())
    assert (record["status"], record["signal"], record["checkpoint"]) == ("interrupted", name, str(saved[0]))
