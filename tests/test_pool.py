"""autotune.runner._pool: trial processes forked from a warm server that imported torch and the harness once:
what the server imports, and a trial forked from it in the state a fresh ``python -m autotune.runner._child``
would have (its own session, only the environment it is given, its own TMPDIR, the default start method, the
caller's ``__main__`` not run again), reporting its end as the runner reads it."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import types
from pathlib import Path
from typing import Any

import numpy
import pytest
from conftest import WORKLOADS, workload_spec

from autotune.runner import MeasureSettings, TrialJob
from autotune.runner._pool import PRELOAD, PooledProcess, pooled, preload_modules, server_pids
from autotune.workload._workload import load_workload

FAST = MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_window_steps=20)  # conftest's fast_measure
LONG = MeasureSettings(warmup_steps=1, windows=50, window_seconds=1.0, max_window_steps=20)

# A workload that says, as it is loaded in the trial, what state its process is in.
_FACTS = f"""
import json, multiprocessing, os, sys, tempfile
sys.path.insert(0, {str(WORKLOADS)!r})
from tiny import workload as tiny

def workload():
    facts = {{
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "sid": os.getsid(0),
        "tempdir": tempfile.gettempdir(),
        "multiprocessing_tempdir": multiprocessing.util.get_temp_dir(),
        "environment": dict(os.environ),
        "start_method": multiprocessing.get_start_method(),
    }}
    print("facts " + json.dumps(facts), flush=True)
    return tiny()
"""


def _default_start_method() -> str:
    """The start method a fresh interpreter has."""
    code = "import multiprocessing; print(multiprocessing.get_start_method())"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


class Trial:
    """A job run as a PooledProcess: the trial's channel, watchdog and log, as the runner hands them over."""

    def __init__(self, job: TrialJob, env: dict[str, str]) -> None:
        self.read_fd, write_fd = os.pipe()
        watchdog_read, self.watchdog_write = os.pipe()
        self.log = tempfile.TemporaryFile()
        self.process = PooledProcess(
            write_fd, watchdog_read, self.log.fileno(), json.dumps(job.to_json()), env, job.workload
        )
        os.close(write_fd)
        os.close(watchdog_read)
        self.channel = os.fdopen(self.read_fd)

    def events(self) -> list[dict[str, Any]]:
        """Every event, to the end of the channel."""
        return [json.loads(line) for line in self.channel]

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def close(self) -> None:
        self.channel.close()
        os.close(self.watchdog_write)
        self.log.close()


def _environment(scratch: Path) -> dict[str, str]:
    keep = ("PATH", "HOME", "PYTHONPATH", "AUTOTUNE_CACHE_DIR")
    return {
        **{name: os.environ[name] for name in keep if name in os.environ},
        "TMPDIR": str(scratch),
        "TRIAL_ONLY": "yes",
    }


# --- pooled and preload_modules ---------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [(None, True), ("pool", True), ("fresh", False), (" Fresh ", False)])
def test_pooled_unless_autotune_trial_start_is_fresh(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("AUTOTUNE_TRIAL_START", raising=False)
    else:
        monkeypatch.setenv("AUTOTUNE_TRIAL_START", value)
    assert pooled() is expected  # Linux has the forkserver


def test_preload_modules_are_the_trial_side_starting_with_the_servers_guard():
    names = preload_modules()
    assert names[0] == "autotune.runner._server_guard"  # first: the server dies with its parent from here on
    assert {"torch", "autotune.runner._child", "autotune.runner._harness", "autotune.runner._sweep"} <= set(names)
    assert preload_modules(None) == names == PRELOAD


@pytest.mark.parametrize("name", PRELOAD)
def test_preload_modules_all_exist(name):
    assert importlib.util.find_spec(name) is not None, f"the warm server would fail to import {name}"


def test_preload_modules_add_the_warm_libraries_a_loaded_workload_module_uses(tmp_path):
    path = tmp_path / "uses_numpy.py"
    path.write_text(
        textwrap.dedent(
            f"""
            import json
            import sys

            import numpy as np
            from numpy.linalg import norm
            from torch import nn

            sys.path.insert(0, {str(WORKLOADS)!r})
            from tiny import workload
            """
        )
    )
    spec = f"{path}:workload"
    assert preload_modules(spec) == PRELOAD  # not loaded in this process yet: nothing known of it
    load_workload(spec)
    names = preload_modules(spec)
    assert names[: len(PRELOAD)] == PRELOAD
    assert sorted(names[len(PRELOAD) :]) == ["numpy", "numpy.linalg"]  # not json, sys or torch.nn


def test_preload_modules_of_a_module_spec_read_the_loaded_module(monkeypatch):
    module = types.ModuleType("my_team_workloads")
    module.np = numpy
    module.workload = lambda: None
    monkeypatch.setitem(sys.modules, "my_team_workloads", module)
    assert preload_modules("my_team_workloads:workload") == [*PRELOAD, "numpy"]
    assert preload_modules("not_loaded_anywhere:workload") == PRELOAD


# --- A trial forked from the warm server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def forked(tmp_path_factory) -> dict[str, Any]:
    """A trial of the facts workload, forked from the warm server: its events, exit, output and facts."""
    folder = tmp_path_factory.mktemp("pool")
    (folder / "facts.py").write_text(_FACTS)
    scratch = folder / "scratch"
    scratch.mkdir()
    job = TrialJob(workload=f"{folder / 'facts.py'}:workload", config={"batch_size": 8}, measure=FAST)
    environment = _environment(scratch)
    trial = Trial(job, environment)
    try:
        events = trial.events()
        exit_code = trial.process.wait()
        output = trial.output()
    finally:
        trial.close()
    [line] = [line for line in output.splitlines() if line.startswith("facts ")]
    return {
        "process": trial.process,
        "events": events,
        "exit_code": exit_code,
        "output": output,
        "facts": json.loads(line.removeprefix("facts ")),
        "scratch": scratch,
        "environment": environment,
        "servers": server_pids(),
    }


def test_pooled_trial_runs_the_job_and_exits_zero(forked):
    assert [event["event"] for event in forked["events"]] == [
        "started",
        "warmup_step",
        "warmup",
        "window",
        "window",
        "done",
    ], forked["output"]
    process = forked["process"]
    assert forked["exit_code"] == 0 and process.poll() == 0 and process.returncode == 0
    assert forked["facts"]["pid"] == process.pid


def test_pooled_trial_is_forked_from_the_warm_server(forked):
    assert forked["facts"]["ppid"] in forked["servers"]
    assert forked["facts"]["ppid"] != os.getpid()


def test_pooled_trial_leads_its_own_session(forked):
    # Its own process group too: the runner kills it as one, DataLoader workers included.
    assert forked["facts"]["sid"] == forked["facts"]["pid"]


def test_pooled_trial_has_exactly_the_environment_it_is_given(forked):
    environment = forked["facts"]["environment"]
    assert environment == forked["environment"]
    # Not the server's, which it was forked from: the server started with this process's environment.
    assert "AUTOTUNE_POOL_PARENT" in os.environ and "AUTOTUNE_POOL_PARENT" not in environment


def test_pooled_trial_temporary_files_go_to_its_tmpdir(forked):
    facts = forked["facts"]
    assert facts["tempdir"] == str(forked["scratch"])
    assert Path(facts["multiprocessing_tempdir"]).parent == forked["scratch"]  # pymp-*: multiprocessing's own


def test_pooled_trial_starts_dataloader_workers_as_a_fresh_interpreter_would(forked):
    assert forked["facts"]["start_method"] == _default_start_method()


def test_pooled_trial_killed_by_a_signal_reports_it_as_a_negative_exit_code(tmp_path):
    job = TrialJob(workload=workload_spec("slow", "faults.py"), config={"batch_size": 8}, measure=LONG)
    trial = Trial(job, _environment(tmp_path))
    try:
        for line in trial.channel:  # running: it has sent its first warm-up step
            if json.loads(line)["event"] == "warmup_step":
                break
        assert trial.process.poll() is None and trial.process.returncode is None
        os.killpg(trial.process.pid, signal.SIGKILL)  # as the runner ends a trial
        assert trial.process.wait() == -signal.SIGKILL
        assert trial.process.poll() == trial.process.returncode == -signal.SIGKILL
    finally:
        if trial.process.poll() is None:
            os.killpg(trial.process.pid, signal.SIGKILL)
            trial.process.wait()
        trial.close()


def test_server_pids_are_running_processes_of_the_pool(forked):
    import psutil

    assert forked["servers"]
    for pid in forked["servers"]:
        assert psutil.pid_exists(pid) and pid != os.getpid()


# --- The caller's __main__ --------------------------------------------------------------------------------------

_SCRIPT = """
import json, os, sys, tempfile

with open(os.environ["IMPORTS_FILE"], "a") as imports:  # each time this file runs as a module
    imports.write(f"{os.getpid()}\\n")

if __name__ == "__main__":
    from autotune.runner import MeasureSettings, TrialJob
    from autotune.runner._pool import PooledProcess

    read_fd, write_fd = os.pipe()
    watchdog_read, watchdog_write = os.pipe()
    measure = MeasureSettings(windows=1, window_seconds=0.1)
    job = json.dumps(TrialJob(workload=sys.argv[1], config={"batch_size": 8}, measure=measure).to_json())
    with tempfile.TemporaryFile() as log:
        process = PooledProcess(write_fd, watchdog_read, log.fileno(), job, dict(os.environ), sys.argv[1])
        os.close(write_fd)
        events = [json.loads(line)["event"] for line in os.fdopen(read_fd)]
        print(json.dumps({"events": events, "exit": process.wait(), "pid": os.getpid()}))
"""


def test_pooled_trial_does_not_run_the_callers_main_script_again(tmp_path):
    """multiprocessing would import the parent's main script in the child (the autotune command, a user's
    script): a script's top-level code runs once, in the parent."""
    script = tmp_path / "search_script.py"
    script.write_text(_SCRIPT)
    imports = tmp_path / "imports"
    result = subprocess.run(
        [sys.executable, str(script), workload_spec()],
        capture_output=True,
        text=True,
        env={**os.environ, "IMPORTS_FILE": str(imports)},
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert imports.read_text().splitlines() == [str(report.pop("pid"))]  # the parent's only
    assert report == {"events": ["started", "warmup_step", "warmup", "window", "done"], "exit": 0}
