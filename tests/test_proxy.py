"""``autotune proxy`` and ``--storage grpc://HOST:PORT``: a search through Optuna's gRPC storage proxy,
the study lock through a storage without an engine, and the one-line errors."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import optuna
import pytest
from conftest import error_line, run_cli, workload_spec
from optuna.trial import TrialState

from autotune.exceptions import StorageError
from autotune.store import _liveness, _lock, _storage
from autotune.store._storage import load_study, open_storage, study_lock
from autotune.study._recovery import SearchProcess

pytest.importorskip("grpc", reason="the gRPC extra is not installed (pip install 'autotune[grpc]')")

FAST_OPTIONS = ["--window-seconds", "0.2", "--windows", "2", "--warmup-steps", "1", "--no-lr-find"]
FAST_OPTIONS += ["--slow-fraction", "0", "--seed", "0"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def proxy_url(tmp_path):
    """An Optuna gRPC storage proxy over a SQLite file, served from a thread of this process: its URL."""
    from optuna.storages._grpc.server import make_server

    port = _free_port()
    server = make_server(open_storage(f"sqlite:///{tmp_path / 'backing.db'}"), "127.0.0.1", port)
    server.start()
    yield f"grpc://127.0.0.1:{port}"
    server.stop(0).wait()


def test_proxy_command_serves_a_search_and_stops_cleanly_on_sigterm(tmp_path):
    backing = f"sqlite:///{tmp_path / 'studies' / 'backing.db'}"
    port = _free_port()
    proxy = subprocess.Popen(
        [sys.executable, "-m", "autotune.cli", "proxy", "--storage", backing, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert proxy.stdout.readline() == f"storage proxy at grpc://127.0.0.1:{port} (Ctrl-C to stop)\n"
        space = tmp_path / "space.yaml"
        space.write_text("effective_batch: free\nknobs: {batch_size: [8, 16]}\n")
        search = subprocess.run(
            [sys.executable, "-m", "autotune.cli", "search", "--workload", workload_spec(), "--space", str(space)]
            + ["--storage", f"grpc://127.0.0.1:{port}", "--study", "proxied", "--trials", "2", *FAST_OPTIONS],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=300,
        )
        assert search.returncode == 0, search.stdout + search.stderr
    finally:
        proxy.send_signal(signal.SIGTERM)
        rest = proxy.communicate(timeout=30)[0]
    assert proxy.returncode == 0, rest
    assert rest == "proxy stopped\n"
    trials = optuna.load_study(study_name="proxied", storage=backing).trials  # in the database behind the proxy
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[0].user_attrs["baseline"] is True
    assert [s.study_name for s in optuna.get_all_study_summaries(backing, include_best_trial=False)] == ["proxied"]


def test_open_storage_unreachable_proxy_is_one_line_naming_it(monkeypatch):
    monkeypatch.setattr(_storage, "PROXY_WAIT_SECONDS", 0.3)
    port = _free_port()
    line = error_line(run_cli("report", "--storage", f"grpc://127.0.0.1:{port}"))
    assert line == (
        f"Error: storage grpc://127.0.0.1:{port}: no proxy answers at 127.0.0.1:{port} within 0s "
        "(start one with 'autotune proxy --storage URL --port PORT')"
    )


def test_open_storage_proxy_url_without_a_port_is_refused():
    with pytest.raises(StorageError) as info:
        open_storage("grpc://proxy-host")
    assert str(info.value) == "storage 'grpc://proxy-host': not a proxy address (example: grpc://127.0.0.1:13000)"


def test_proxy_refuses_to_serve_another_proxy():
    line = error_line(run_cli("proxy", "--storage", "grpc://127.0.0.1:13000"))
    assert line == "Error: storage grpc://127.0.0.1:13000: a proxy serves a database, not another proxy"


def test_study_lock_through_a_proxy_is_held_by_one_thread_at_a_time(proxy_url):
    optuna.create_study(study_name="shared", storage=open_storage(proxy_url))
    inside: list[int] = []
    most = []
    guard = threading.Lock()

    def contend(worker: int) -> None:
        storage = open_storage(proxy_url)  # a client of its own, as a worker has
        for _ in range(4):
            with study_lock(storage, "shared"):
                with guard:
                    inside.append(worker)
                    most.append(len(inside))
                time.sleep(0.01)
                with guard:
                    inside.remove(worker)

    threads = [threading.Thread(target=contend, args=(worker,)) for worker in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(most) == 12
    assert max(most) == 1
    assert load_study(None, proxy_url).study_name == "shared"  # no lock study is left, or listed


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_study_lock_through_a_proxy_of_a_dead_holder_is_taken_over(proxy_url):
    storage = open_storage(proxy_url)
    optuna.create_study(study_name="shared", storage=storage)
    here = SearchProcess.current()
    dead = SearchProcess(host=here.host, machine=here.machine, pid=_dead_pid(), started=here.started)
    lock_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "autotune-lock:shared")
    storage.set_study_system_attr(lock_id, _lock._LOCK_OWNER, {**dead.to_json(), "token": "x", "heartbeat": 0.0})
    assert load_study(None, proxy_url).study_name == "shared"  # a lock study is not a study of the listings

    with study_lock(storage, "shared"):
        taken = storage.get_study_id_from_name("autotune-lock:shared")  # SQLite may give it the same id
        holder = storage.get_study_system_attrs(taken)[_lock._LOCK_OWNER]
        assert (holder["pid"], holder["token"]) != (dead.pid, "x")
        assert holder["pid"] == here.pid
    assert [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)] == ["shared"]


def test_study_lock_through_a_proxy_left_without_a_holder_is_taken_over_after_the_grace(proxy_url, monkeypatch):
    monkeypatch.setattr(_liveness, "GRACE_SECONDS", 0.3)
    storage = open_storage(proxy_url)
    storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "autotune-lock:shared")  # its creator died here
    with study_lock(storage, "shared"):
        pass
    assert optuna.get_all_study_summaries(storage, include_best_trial=False) == []


def test_heartbeat_through_a_proxy_is_judged_by_this_machines_clock(proxy_url):
    storage = open_storage(proxy_url)
    assert not hasattr(storage, "engine")
    assert abs(_storage.database_time(storage) - time.time()) < 5
