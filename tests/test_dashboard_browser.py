"""`autotune dashboard` served for real: its JSON API, and its page in headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import workload_spec

from autotune.study._loop import search
from autotune.study._options import SearchOptions


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> str:
    """A small finished study of the tiny workload, with its note and figures."""
    from autotune.runner import MeasureSettings

    folder = tmp_path_factory.mktemp("dashboard")
    space = folder / "space.yaml"
    space.write_text("effective_batch: free\nknobs:\n  batch_size: [8, 32]\n")
    storage = f"sqlite:///{folder / 'studies.db'}"
    search(
        SearchOptions(
            workload=workload_spec(),
            storage=storage,
            space=space,
            n_trials=3,
            seed=0,
            lr_find=False,
            measure=MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_window_steps=20),
        )
    )
    return storage


@pytest.fixture
def dashboard(finished_study: str):
    """`autotune dashboard --port 0` in its own process; yields its base URL, then Ctrl-C."""
    process = subprocess.Popen(
        [sys.executable, "-m", "autotune.cli", "dashboard", "--storage", finished_study, "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line.startswith("optuna-dashboard at http://127.0.0.1:"), line
    url = line.split()[2]
    try:
        yield url.removesuffix("dashboard/")
    finally:
        process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        output, _ = process.communicate(timeout=20)
        assert process.returncode == 0, output
        assert "dashboard stopped" in output


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.load(response)


def test_dashboard_api_lists_study_trials_and_user_attrs(dashboard: str) -> None:
    summaries = _get_json(dashboard + "api/studies")["study_summaries"]
    assert [s["study_name"] for s in summaries] == ["tiny"]
    detail = _get_json(f"{dashboard}api/studies/{summaries[0]['study_id']}?after=0")
    assert len(detail["trials"]) == 3
    attrs = {item["key"]: item["value"] for item in detail["trials"][0]["user_attrs"]}
    assert attrs["status"] == "ok"
    assert float(attrs["samples_per_second"]) > 0
    assert attrs["baseline"] == "True"
    assert detail["objective_names"] == ["full run (s)"]  # the objective: the full run's projected time
    assert "**Winner:** trial #" in detail["note"]["body"]
    assert "the baseline" in detail["note"]["body"]
    figure_ids = {graph["id"] for graph in detail["plotly_graph_objects"]}
    assert figure_ids == {"throughput-vs-batch-size", "peak-memory-vs-batch-size"}


def test_dashboard_port_in_use_is_one_error_line(dashboard: str, finished_study: str) -> None:
    port = dashboard.rstrip("/").rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, "-m", "autotune.cli", "dashboard", "--storage", finished_study, "--port", port],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == f"Error: port {port} on 127.0.0.1 is already in use; pick another with --port"


def test_dashboard_unreachable_storage_is_one_error_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "autotune.cli", "dashboard", "--storage", "postgresql://nobody@127.0.0.1:1/none"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "Error: storage postgresql://nobody@127.0.0.1:1/none: cannot connect"
    )


@pytest.mark.skipif(
    shutil.which("chromium") is None, reason="Debian's chromium is not installed (apt-get install chromium)"
)
def test_dashboard_study_page_renders_in_headless_chromium(dashboard: str, tmp_path: Path) -> None:
    study_id = _get_json(dashboard + "api/studies")["study_summaries"][0]["study_id"]
    page = f"{dashboard}dashboard/studies/{study_id}"
    browser = [
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1400,1000",
        "--virtual-time-budget=15000",
    ]
    dom = subprocess.run([*browser, "--dump-dom", page], capture_output=True, text=True, timeout=120).stdout
    assert "tiny" in dom  # the study's name, rendered by the page's JavaScript
    assert "full run (s)" in dom  # the objective's name on the history plot
    shot = tmp_path / "study.png"
    subprocess.run([*browser, f"--screenshot={shot}", page], capture_output=True, timeout=120, env=os.environ)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000  # a rendered page, not a blank one
