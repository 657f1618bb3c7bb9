"""optuna-dashboard reads a finished autotune study: its JSON API, called in-process through WSGI."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest
from conftest import workload_spec

from autotune.runner import MeasureSettings
from autotune.study._loop import search
from autotune.study._options import SearchOptions

FAST = MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_window_steps=20)


def _get(app, path: str, query: str = "") -> tuple[str, dict]:
    """A GET request straight into the WSGI app; the status line and the decoded JSON body."""
    reply: dict = {}

    def start_response(status, headers, exc_info=None):
        reply["status"] = status

    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_LENGTH": "0",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    body = b"".join(app(environ, start_response))
    return reply["status"], json.loads(body)


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    """The dashboard's WSGI app over a finished study of tiny (the baseline and one searched trial)."""
    import optuna_dashboard

    folder = tmp_path_factory.mktemp("dashboard")
    space = folder / "space.yaml"
    space.write_text("effective_batch: free\nknobs: {batch_size: [16, 64]}\n")
    storage = f"sqlite:///{folder / 'studies' / 'dashboard.db'}"
    search(
        SearchOptions(
            workload=workload_spec(),
            storage=storage,
            space=space,
            n_trials=2,
            measure=FAST,
            seed=0,
            slow_fraction=0.0,
            lr_find=False,
        )
    )
    return optuna_dashboard.wsgi(storage)


def _study_id(app) -> int:
    status, listing = _get(app, "/api/studies")
    assert status == "200 OK"
    (summary,) = listing["study_summaries"]
    return summary["study_id"]


def test_dashboard_lists_the_study_with_its_setup(dashboard):
    status, listing = _get(dashboard, "/api/studies")
    assert status == "200 OK"
    (summary,) = listing["study_summaries"]
    assert summary["study_name"] == "tiny"
    assert summary["directions"] == ["minimize"]  # the full run's projected time
    setup = {attr["key"]: attr["value"] for attr in summary["user_attrs"]}
    assert setup["workload"] == workload_spec()
    assert json.loads(setup["budgets"])["memory_headroom"] == 0.1
    assert all(len(value) < 1024 for value in setup.values())  # the dashboard cuts longer values


def test_dashboard_study_detail_shows_trials_with_their_user_attributes(dashboard):
    status, detail = _get(dashboard, f"/api/studies/{_study_id(dashboard)}", "after=0")
    assert status == "200 OK"
    assert detail["name"] == "tiny"
    assert detail["objective_names"] == ["full run (s)"]
    assert [trial["number"] for trial in detail["trials"]] == [0, 1]
    assert [trial["state"] for trial in detail["trials"]] == ["Complete", "Complete"]
    for trial in detail["trials"]:
        attrs = {attr["key"]: attr["value"] for attr in trial["user_attrs"]}
        assert attrs["status"] == "ok"
        assert float(attrs["samples_per_second"]) > 0
        assert json.loads(attrs["config"])["batch_size"] in (8, 16, 64)
        assert "peak_memory_bytes" in attrs and "reason" in attrs
    baseline_attrs = {attr["key"]: attr["value"] for attr in detail["trials"][0]["user_attrs"]}
    assert baseline_attrs["baseline"] == "True"
    keys = {entry["key"] for entry in detail["union_user_attrs"]}
    assert {
        "status",
        "samples_per_second",
        "reason",
        "peak_memory_bytes",
        "throughput_cv",
        "noise_scale",
        "noise_scale_stderr",
    } <= keys  # the gradient noise scale too: the baseline measures it


def test_dashboard_study_detail_shows_per_window_projections(dashboard):
    _, detail = _get(dashboard, f"/api/studies/{_study_id(dashboard)}", "after=0")
    searched = detail["trials"][1]
    attrs = {attr["key"]: attr["value"] for attr in searched["user_attrs"]}
    assert detail["has_intermediate_values"] is True
    assert [point["step"] for point in searched["intermediate_values"]] == [0, 1]
    # tiny's two epochs at each window's samples/s, x one factor: the samples to the recipe's progress.
    samples = float(attrs["dataset_size"]) * 2
    rates = json.loads(attrs["window_samples_per_second"])
    factors = [
        point["value"] * rate / samples for point, rate in zip(searched["intermediate_values"], rates, strict=True)
    ]
    assert factors == pytest.approx([factors[0]] * len(factors), rel=1e-4)
    assert [trial["number"] for trial in detail["best_trials"]] in ([0], [1])


def test_dashboard_shows_the_study_note_and_stored_figures(dashboard):
    _, detail = _get(dashboard, f"/api/studies/{_study_id(dashboard)}", "after=0")
    body = detail["note"]["body"]
    assert body.startswith("## autotune: tiny\n")
    assert re.search(r"^\*\*Winner:\*\* trial #[01], \d+\.\d samples/s", body, re.MULTILINE)
    assert "| ok | 2 |" in body
    assert detail["plotly_graph_objects"], "no figure stored for the dashboard"
