"""A database server restarted mid-search costs a wait and a line, not the search; Optuna's trial
heartbeat retries a stale trial once, with autotune's lineage.

The restart is real: a private PostgreSQL (initdb and pg_ctl in a temporary folder, on a free port)
is restarted with ``pg_ctl restart -m fast`` while ``autotune search`` runs on it. Skipped, saying why,
where PostgreSQL's server programs are not installed or cannot run.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import optuna
import pytest
from conftest import workload_spec
from optuna.trial import TrialState

from autotune.exceptions import StorageError
from autotune.store import _reconnect
from autotune.store._storage import open_storage
from autotune.study import _recovery

FAST_OPTIONS = ["--window-seconds", "0.2", "--windows", "2", "--warmup-steps", "1", "--no-lr-find"]
FAST_OPTIONS += ["--slow-fraction", "0", "--seed", "0"]


def _server_programs() -> tuple[str, str] | None:
    for folder in [*sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True), None]:
        initdb = shutil.which("initdb", path=folder)
        pg_ctl = shutil.which("pg_ctl", path=folder)
        if initdb and pg_ctl:
            return initdb, pg_ctl
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PrivatePostgres:
    """A PostgreSQL server of this test run's own, in a temporary folder; run as the ``postgres``
    user where the tests run as root (initdb refuses root)."""

    def __init__(self, initdb: str, pg_ctl: str, folder: Path, port: int) -> None:
        self.initdb, self.pg_ctl, self.folder, self.port = initdb, pg_ctl, folder, port
        self.data = folder / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *command: str) -> None:
        subprocess.run([*self.as_user, *command], check=True, capture_output=True, text=True, timeout=120)

    def create(self) -> None:
        self._run(self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")
        self.start()

    def _options(self) -> str:
        return f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"

    def start(self) -> None:
        self._run(
            self.pg_ctl, "-D", str(self.data), "-o", self._options(), "-l", str(self.folder / "log"), "-w", "start"
        )

    def restart(self) -> None:
        log = str(self.folder / "log")  # the server's output: not this process's pipes, which it would hold open
        self._run(self.pg_ctl, "-D", str(self.data), "-o", self._options(), "-l", log, "-m", "fast", "-w", "restart")

    def stop(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")


@pytest.fixture(scope="module")
def private_postgres():
    """A private PostgreSQL server on a free port (its URL is ``.url``), stopped afterwards."""
    programs = _server_programs()
    if programs is None:
        pytest.skip("PostgreSQL's initdb and pg_ctl are not installed (/usr/lib/postgresql/*/bin or PATH)")
    pytest.importorskip("psycopg", reason="the PostgreSQL driver (psycopg) is not installed")
    folder = Path(tempfile.mkdtemp(prefix="autotune-pg-", dir="/tmp"))
    server = PrivatePostgres(*programs, folder, _free_port())
    try:
        if server.as_user:
            shutil.chown(folder, "postgres")
        server.create()
    except (OSError, LookupError, subprocess.SubprocessError) as exc:
        shutil.rmtree(folder, ignore_errors=True)
        detail = getattr(exc, "stderr", None) or str(exc)
        pytest.skip(f"a private PostgreSQL cannot run here: {' '.join(str(detail).split())[:200]}")
    yield server
    try:
        server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _finished_trials(url: str) -> int:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            return connection.execute(sqlalchemy.text("SELECT count(*) FROM trials WHERE state = 'COMPLETE'")).scalar()
    except sqlalchemy.exc.SQLAlchemyError:  # the tables are not created yet
        return 0
    finally:
        engine.dispose()


def test_search_survives_a_database_restart_mid_search(private_postgres, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("effective_batch: free\nknobs: {batch_size: [8, 16, 32, 64]}\n")
    command = [sys.executable, "-m", "autotune.cli", "search", "--workload", workload_spec(), "--space", str(space)]
    command += ["--storage", private_postgres.url, "--study", "restarted", "--trials", "4", *FAST_OPTIONS]
    search = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    restarted = threading.Event()

    def restart_after_the_first_trial() -> None:
        give_up = time.monotonic() + 240
        while search.poll() is None and time.monotonic() < give_up:
            if _finished_trials(private_postgres.url) >= 1:
                private_postgres.restart()
                restarted.set()
                return
            time.sleep(0.2)

    thread = threading.Thread(target=restart_after_the_first_trial)
    thread.start()
    output = search.communicate(timeout=300)[0]
    thread.join()
    assert restarted.is_set(), output
    assert search.returncode == 0, output
    trials = optuna.load_study(study_name="restarted", storage=private_postgres.url).trials
    assert all(t.state.is_finished() for t in trials), [t.state for t in trials]
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 4, output
    assert len([t for t in trials if t.user_attrs.get("baseline")]) >= 1
    lost = [line for line in output.splitlines() if ": connection lost (" in line]
    assert len(lost) <= 1, output  # one line per outage, whichever threads met it
    if lost:
        assert lost[0].startswith(f"storage {private_postgres.url}: connection lost (")
        assert any(
            line.startswith(f"storage {private_postgres.url}: reconnected after ") for line in output.splitlines()
        )


def test_storage_calls_wait_out_a_restart_and_say_so_once(private_postgres, capsys):
    storage = open_storage(private_postgres.url)
    study = optuna.create_study(study_name="waits", storage=storage)
    private_postgres.stop()
    threading.Timer(1.0, private_postgres.start).start()
    study.set_user_attr("after", "the restart")  # made while the server is down, and again once it is up
    assert optuna.load_study(study_name="waits", storage=storage).user_attrs == {"after": "the restart"}
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"storage {private_postgres.url}: connection lost (")
    assert lines[0].endswith(f"retrying for up to {_reconnect.OUTAGE_SECONDS:.0f}s")
    assert lines[1].startswith(f"storage {private_postgres.url}: reconnected after ")


def test_storage_calls_give_up_after_the_bound_with_one_line(private_postgres, monkeypatch, capsys):
    storage = open_storage(private_postgres.url)
    study = optuna.create_study(study_name="gives-up", storage=storage)
    monkeypatch.setattr(_reconnect, "OUTAGE_SECONDS", 0.5)
    private_postgres.stop()
    try:
        with pytest.raises(StorageError) as info:
            study.set_user_attr("never", "written")
    finally:
        private_postgres.start()
    message = str(info.value)
    assert message.startswith(f"storage {private_postgres.url}: connection lost for ")
    assert message.endswith("; gave up: finished trials are kept in the study")
    assert "\n" not in message


def test_study_lock_is_taken_through_a_restart(private_postgres):
    from autotune.store._storage import study_lock

    storage = open_storage(private_postgres.url)
    optuna.create_study(study_name="locked", storage=storage)
    private_postgres.stop()
    threading.Timer(1.0, private_postgres.start).start()
    with study_lock(storage, "locked"):
        taken = True
    assert taken


# --- Optuna's trial heartbeat -------------------------------------------------------------------


def _stale_running_trial(storage, study: optuna.Study) -> optuna.trial.FrozenTrial:
    """A running trial with a config, whose Optuna heartbeat is an hour old."""
    import sqlalchemy

    trial = study.ask()
    trial.suggest_categorical("batch_size", [8, 16])
    trial.set_user_attr("config", {"batch_size": trial.params["batch_size"]})
    storage.record_heartbeat(trial._trial_id)
    with storage.engine.begin() as connection:
        connection.execute(
            sqlalchemy.text(
                "UPDATE trial_heartbeats SET heartbeat = heartbeat - interval '1 hour' WHERE trial_id = :id"
            ),
            {"id": trial._trial_id},
        )
    return study.trials[trial.number]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_stale_optuna_heartbeat_fails_the_trial_and_runs_its_config_again_once(private_postgres):
    storage = open_storage(private_postgres.url, on_stale_trial=_recovery.StaleTrialRetry())
    assert storage.get_heartbeat_interval() == int(_recovery.HEARTBEAT_SECONDS)
    study = optuna.create_study(study_name="stale", storage=storage)
    stale = _stale_running_trial(storage, study)

    other = open_storage(private_postgres.url, on_stale_trial=_recovery.StaleTrialRetry())  # a second worker
    for looker in (storage, other, storage):
        optuna.storages.fail_stale_trials(optuna.load_study(study_name="stale", storage=looker))
    assert _recovery.recover_interrupted(study, storage) == []  # autotune's recovery finds nothing left

    ended, again = study.trials
    assert ended.state == TrialState.FAIL
    assert ended.user_attrs["status"] == "interrupted"
    assert ended.user_attrs["reason"] == (
        "its trial heartbeat (Optuna's) was silent for more than 60s; its config runs again"
    )
    assert again.state == TrialState.WAITING
    assert again.user_attrs == {"retry_of": stale.number, "interruptions": 1}
    assert again.params == stale.params
    assert again.system_attrs["fixed_params"] == stale.params
    assert again.system_attrs["failed_trial"] == stale.number
    assert again.system_attrs["retry_history"] == [stale.number]


def test_a_proxy_waits_out_its_databases_restart_for_its_workers(private_postgres):
    pytest.importorskip("grpc", reason="the gRPC extra is not installed (pip install 'autotune[grpc]')")
    from optuna.storages._grpc.server import make_server

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = make_server(open_storage(private_postgres.url), "127.0.0.1", port)
    server.start()
    try:
        worker = open_storage(f"grpc://127.0.0.1:{port}")
        study = optuna.create_study(study_name="behind-a-proxy", storage=worker)
        private_postgres.stop()
        threading.Timer(1.0, private_postgres.start).start()
        study.set_user_attr("after", "the restart")
        assert optuna.load_study(study_name="behind-a-proxy", storage=worker).user_attrs == {"after": "the restart"}
    finally:
        server.stop(0).wait()
