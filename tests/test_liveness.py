"""Whether a search process is alive: its identity, when it is taken for dead, and the clock its
heartbeat is written and judged by (the database server's, where it has one)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import optuna
import psutil

from autotune.store._liveness import GRACE_SECONDS, SearchProcess, gone, machine
from autotune.store._storage import open_storage


def _info(process: SearchProcess, **changes) -> dict:
    return {**process.to_json(), "heartbeat": time.time(), **changes}


def test_a_live_process_on_this_machine_is_alive_whatever_its_heartbeat():
    me = SearchProcess.current()
    assert me.machine == machine() and me.pid == os.getpid()
    assert gone(_info(me, heartbeat=0.0), time.time()) is None  # judged by its pid here, not its beat


def test_a_dead_process_on_this_machine_is_gone_at_once():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = round(psutil.Process(child.pid).create_time(), 2)
    child.wait()
    info = _info(SearchProcess.current(), pid=child.pid, started=started)
    assert gone(info, time.time()) == f"its search process (pid {child.pid} on {info['host']}) stopped while it ran"


def test_a_later_process_with_the_same_pid_is_not_the_one_registered():
    info = _info(SearchProcess.current(), started=SearchProcess.current().started - 100.0)
    assert "stopped while it ran" in gone(info, time.time())


def test_a_process_that_said_it_is_done_is_gone_from_any_machine():
    info = _info(SearchProcess.current(), phase="done")
    assert "stopped while it ran" in gone(info, time.time())
    assert "stopped while it ran" in gone({**info, "machine": "elsewhere"}, time.time())


def test_a_process_on_another_machine_is_judged_by_its_heartbeat_and_the_grace():
    now = time.time()
    info = _info(SearchProcess.current(), machine="elsewhere", heartbeat=now - GRACE_SECONDS + 5)
    assert gone(info, now) is None
    assert gone({**info, "heartbeat": now - GRACE_SECONDS - 5}, now).endswith(
        f"sent no heartbeat for {GRACE_SECONDS + 5:.0f}s"
    )


def test_heartbeats_on_postgresql_use_the_servers_clock_not_the_workers(postgres, pg_study, monkeypatch):
    """A worker whose clock runs an hour ahead still beats in the server's time, and a process whose
    beat is recent by the server's clock is alive to a judge whose own clock is an hour behind."""
    from autotune.store._liveness import database_time
    from autotune.study import _recovery

    storage = open_storage(postgres)
    optuna.create_study(study_name=pg_study, storage=storage)
    study_id = storage.get_study_id_from_name(pg_study)
    server_now = database_time(storage)
    assert abs(server_now - time.time()) < 60  # the server here shares this machine's clock

    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600.0)
    beat = _recovery.Heartbeat(storage, pg_study)
    beat._beat()
    monkeypatch.setattr(time, "time", lambda: real_time() - 3600.0)
    written = storage.get_study_system_attrs(study_id)[beat.process.key]
    assert abs(written["heartbeat"] - server_now) < 30
    remote = {**written, "machine": "another-machine"}  # judged by its heartbeat, as from another machine
    assert _recovery._gone(remote, database_time(storage)) is None
    stale = {**remote, "heartbeat": database_time(storage) - _recovery.GRACE_SECONDS - 5}
    assert "sent no heartbeat for" in _recovery._gone(stale, database_time(storage))


def test_database_time_on_sqlite_is_this_machines_clock(tmp_path):
    from autotune.store._liveness import database_time

    storage = open_storage(f"sqlite:///{tmp_path}/t.db")
    assert abs(database_time(storage) - time.time()) < 5
