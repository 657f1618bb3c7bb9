"""A search that dies (SIGKILL, SIGTERM, a lost machine) loses no trial and leaves nothing behind.

The kills are real: ``autotune search`` runs in a process of its own, is killed while a trial
(with DataLoader workers) runs, and is then resumed. Dead processes of other machines are
forged in the study (their heartbeat is a study attribute), since this test has one machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import optuna
import psutil
import pytest
from conftest import workload_spec
from optuna.trial import TrialState

from autotune.store._storage import open_storage
from autotune.study import _recovery
from autotune.study._recovery import GRACE_SECONDS, Heartbeat, SearchProcess, claim_trial, recover_interrupted

MARK_VARIABLE = "AUTOTUNE_TEST_RECOVERY_MARK"
FAST_OPTIONS = [
    "--window-seconds",
    "0.2",
    "--windows",
    "2",
    "--warmup-steps",
    "1",
    "--no-lr-find",
    "--slow-fraction",
    "0",
    "--seed",
    "0",
]
PARENT_DEATH_SECONDS = 5.0  # no trial process may be alive this long after its search died


@pytest.fixture
def scratch_root():
    """A temporary folder of the search's own, where its trials' scratch folders go (short: DataLoader
    workers make Unix sockets there, whose paths are limited to 107 characters)."""
    root = Path(tempfile.mkdtemp(prefix="autotune-test-", dir="/tmp"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def killable(tmp_path, scratch_root):
    """`autotune search` of faults.slow (0.3 s steps, 2 DataLoader workers) in a process of its own,
    with its temporary folder and an environment mark of its own."""
    space = tmp_path / "space.yaml"
    space.write_text("knobs: {batch_size: [8, 16]}\n")
    storage = f"sqlite:///{tmp_path / 'studies' / 'kill.db'}"
    mark = uuid.uuid4().hex
    env = {**os.environ, "TMPDIR": str(scratch_root), MARK_VARIABLE: mark}
    command = [
        sys.executable,
        "-m",
        "autotune.cli",
        "search",
        "--workload",
        workload_spec("slow", "faults.py"),
        "--space",
        str(space),
        "--storage",
        storage,
        *FAST_OPTIONS,
    ]

    def start(trials: int) -> subprocess.Popen:
        return subprocess.Popen(
            [*command, "--trials", str(trials)],
            env=env,
            cwd=tmp_path,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    return {"start": start, "storage": storage, "mark": mark, "scratch_root": scratch_root}


def _marked(mark: str) -> list[psutil.Process]:
    """Live processes carrying the mark: trial processes and their DataLoader workers."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.status() != psutil.STATUS_ZOMBIE and process.environ().get(MARK_VARIABLE) == mark:
                if "autotune.runner._child" in " ".join(process.cmdline()):
                    found.append(process)
        except psutil.Error:
            continue
    return found


def _study(storage: str) -> optuna.Study:
    return optuna.load_study(study_name="faults.slow", storage=storage)


def _running_trial_numbers(storage: str) -> list[int]:
    """Trials running with their config drawn, read without opening the storage through Optuna
    (which would create its tables, racing the search that is creating them)."""
    path = storage.removeprefix("sqlite:///")
    if not os.path.exists(path):
        return []
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            rows = connection.execute(
                "SELECT trials.number FROM trials JOIN trial_user_attributes USING (trial_id) "
                "WHERE trials.state = 'RUNNING' AND trial_user_attributes.key = 'config'"
            ).fetchall()
    except sqlite3.OperationalError:  # its tables are being created
        return []
    return [number for (number,) in rows]


def _wait_for_a_running_trial(killable, search: subprocess.Popen) -> optuna.trial.FrozenTrial:
    """Until the study has a running trial whose process and both its workers are up."""
    give_up = time.monotonic() + 120
    while time.monotonic() < give_up:
        assert search.poll() is None, search.communicate()[0]
        running = _running_trial_numbers(killable["storage"])
        if running and len(_marked(killable["mark"])) >= 3:
            return _study(killable["storage"]).trials[running[0]]
        time.sleep(0.2)
    search.kill()
    raise AssertionError(f"no trial started: {search.communicate()[0]}")


def _scratch_folders(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir() if path.name.startswith("autotune-trial-"))


def test_search_killed_mid_trial_kills_the_trial_and_a_resume_runs_its_config_again(killable):
    search = killable["start"](3)
    killed = _wait_for_a_running_trial(killable, search)
    assert killed.user_attrs["baseline"] is True
    assert killed.user_attrs["pid"] == search.pid
    assert killed.user_attrs["host"] == os.uname().nodename

    search.send_signal(signal.SIGKILL)
    search.communicate()
    time.sleep(PARENT_DEATH_SECONDS)
    left = _marked(killable["mark"])
    assert left == [], [process.cmdline() for process in left]
    assert len(_scratch_folders(killable["scratch_root"])) == 1  # its parent could not remove it

    resumed = killable["start"](1)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    assert f"note: trial #{killed.number} was interrupted (its search process is gone); its config runs again" in output

    trials = _study(killable["storage"]).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    interrupted, again = trials
    assert interrupted.user_attrs["status"] == "interrupted"
    assert interrupted.user_attrs["reason"] == (
        f"its search process (pid {search.pid} on {os.uname().nodename}) stopped while it ran; its config runs again"
    )
    # A baseline that never finished is measured again.
    assert again.user_attrs["baseline"] is True
    assert again.user_attrs["retry_of"] == interrupted.number
    assert again.user_attrs["status"] == "ok"
    assert again.user_attrs["config"] == interrupted.user_attrs["config"]
    assert _scratch_folders(killable["scratch_root"]) == []
    assert _marked(killable["mark"]) == []


@pytest.mark.slow  # a search, a SIGTERM and a resume: about 19 s beside its SIGKILL twin in the default run
def test_search_sigterm_ends_the_trial_exits_143_and_a_resume_goes_on(killable):
    search = killable["start"](3)
    stopped = _wait_for_a_running_trial(killable, search)

    search.send_signal(signal.SIGTERM)
    output = search.communicate(timeout=60)[0]
    assert search.returncode == 143, output
    assert output.splitlines()[-1] == (
        "Terminated; finished trials are kept in the study: run the same command to resume."
    )
    assert "Traceback" not in output
    # The search ended its trial itself: nothing is left, even before a resume.
    assert _marked(killable["mark"]) == []
    assert _scratch_folders(killable["scratch_root"]) == []
    trial = _study(killable["storage"]).trials[stopped.number]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["status"] == "interrupted"
    assert trial.user_attrs["reason"] == "the search was stopped (SIGTERM) while this trial ran; its config runs again"

    resumed = killable["start"](1)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output
    trials = _study(killable["storage"]).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["retry_of"] == stopped.number
    assert trials[1].user_attrs["config"] == trial.user_attrs["config"]
    assert [t.user_attrs["status"] for t in trials] == ["interrupted", "ok"]
    assert _scratch_folders(killable["scratch_root"]) == []


# --- Processes the study knows of, judged without killing anything -----------------------------


@pytest.fixture
def study_and_storage(storage_url):
    storage = open_storage(storage_url)
    study = optuna.create_study(study_name="forged", storage=storage, direction="maximize")
    return study, storage


def _register(storage, process: SearchProcess, heartbeat: float) -> None:
    study_id = storage.get_study_id_from_name("forged")
    storage.set_study_system_attr(study_id, process.key, {**process.to_json(), "heartbeat": heartbeat})


def _running_trial(study: optuna.Study, process: SearchProcess | None, **attrs) -> optuna.Trial:
    trial = study.ask()
    trial.suggest_categorical("batch_size", [8, 16])
    if process is not None:
        claim_trial(trial, process)
    for key, value in {"config": {"batch_size": trial.params["batch_size"]}, **attrs}.items():
        trial.set_user_attr(key, value)
    return trial


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_recover_interrupted_trial_of_a_dead_process_on_this_machine_at_once(study_and_storage):
    study, storage = study_and_storage
    here = SearchProcess.current()
    dead = SearchProcess(host=here.host, machine=here.machine, pid=_dead_pid(), started=here.started)
    _register(storage, dead, heartbeat=time.time())  # a fresh heartbeat: the pid alone decides here
    trial = _running_trial(study, dead)

    assert recover_interrupted(study, storage) == [trial.number]
    ended, again = study.trials
    assert ended.state == TrialState.FAIL
    assert ended.user_attrs["status"] == "interrupted"
    assert ended.user_attrs["reason"] == (
        f"its search process (pid {dead.pid} on {here.host}) stopped while it ran; its config runs again"
    )
    assert again.state == TrialState.WAITING
    assert again.user_attrs == {"retry_of": trial.number, "interruptions": 1}
    assert again.system_attrs["fixed_params"] == trial.params
    assert recover_interrupted(study, storage) == []  # run again once, not once per look


def test_recover_interrupted_trial_of_another_machine_waits_out_the_heartbeat_grace(study_and_storage):
    study, storage = study_and_storage
    elsewhere = SearchProcess(host="gpu-node-7", machine="another-machine", pid=os.getpid(), started=1.0)
    _register(storage, elsewhere, heartbeat=time.time() - GRACE_SECONDS + 30)
    trial = _running_trial(study, elsewhere)
    assert recover_interrupted(study, storage) == []
    assert study.trials[0].state == TrialState.RUNNING

    _register(storage, elsewhere, heartbeat=time.time() - GRACE_SECONDS - 30)
    assert recover_interrupted(study, storage) == [trial.number]
    ended = study.trials[0]
    assert ended.user_attrs["status"] == "interrupted"
    assert ended.user_attrs["reason"].startswith("its search process (pid ")
    assert " on gpu-node-7) sent no heartbeat for " in ended.user_attrs["reason"]
    assert study.trials[1].system_attrs["fixed_params"] == trial.params  # enqueued: its params, fixed


def test_recover_interrupted_config_cut_off_three_times_is_not_run_again(study_and_storage):
    study, storage = study_and_storage
    here = SearchProcess.current()
    dead = SearchProcess(host=here.host, machine=here.machine, pid=_dead_pid(), started=here.started)
    _register(storage, dead, heartbeat=time.time())
    _running_trial(study, dead, retry_of=7, interruptions=2)

    recover_interrupted(study, storage)
    assert [t.state for t in study.trials] == [TrialState.FAIL]
    assert study.trials[0].user_attrs["reason"].endswith("; not run again: its config was cut off 3 times in a row")


def test_recover_interrupted_trial_without_an_owner_waits_while_another_search_lives(study_and_storage):
    study, storage = study_and_storage
    elsewhere = SearchProcess(host="gpu-node-7", machine="another-machine", pid=1, started=1.0)
    _register(storage, elsewhere, heartbeat=time.time())
    trial = study.ask()  # cut off before it recorded its process: it may be gpu-node-7's
    assert recover_interrupted(study, storage) == []

    _register(storage, elsewhere, heartbeat=time.time() - GRACE_SECONDS - 1)
    assert recover_interrupted(study, storage) == [trial.number]
    assert study.trials[0].user_attrs["reason"] == "its search process stopped before the trial started"
    assert len(study.trials) == 1  # no config was drawn: nothing to run again


def test_heartbeat_registers_the_process_and_beats_until_stopped(study_and_storage, monkeypatch):
    study, storage = study_and_storage
    monkeypatch.setattr(_recovery, "HEARTBEAT_SECONDS", 0.05)
    study_id = storage.get_study_id_from_name("forged")
    with Heartbeat(storage, "forged") as heartbeat:
        first = storage.get_study_system_attrs(study_id)[heartbeat.process.key]["heartbeat"]
        time.sleep(0.5)
        later = storage.get_study_system_attrs(study_id)[heartbeat.process.key]["heartbeat"]
    assert later > first
    registered = storage.get_study_system_attrs(study_id)[heartbeat.process.key]
    assert (registered["pid"], registered["host"]) == (os.getpid(), os.uname().nodename)
