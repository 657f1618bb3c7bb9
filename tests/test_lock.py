"""The study lock: held by one holder at a time, on SQLite (a file lock), on PostgreSQL (an advisory
lock) and through Optuna's storage API alone (a lock study), where a dead holder's lock is taken over.

Holders are threads here, each with a storage of its own (the file lock and the server's lock are taken
per open file and per connection, as by separate processes); test_proxy.py takes it through a proxy."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import optuna
import psutil
import pytest

from autotune.store import _liveness, _lock
from autotune.store._liveness import SearchProcess
from autotune.store._lock import LOCK_STUDY_PREFIX, is_lock_study, study_lock
from autotune.store._storage import open_storage


def _never_together(storages: list, name: str = "shared", rounds: int = 3) -> list[tuple[float, float]]:
    """Each storage's thread takes the lock ``rounds`` times; the spans it was held, in order."""
    spans: list[tuple[float, float]] = []
    errors: list[BaseException] = []

    def hold(storage) -> None:
        try:
            for _ in range(rounds):
                with study_lock(storage, name):
                    start = time.monotonic()
                    time.sleep(0.05)
                    spans.append((start, time.monotonic()))
        except BaseException as exc:  # noqa: BLE001 - reported below, on the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=hold, args=(storage,)) for storage in storages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    spans.sort()
    assert len(spans) == rounds * len(storages)
    assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:], strict=False)), spans
    return spans


def test_study_lock_on_sqlite_is_held_by_one_at_a_time(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    _never_together([open_storage(url) for _ in range(3)])


def test_study_lock_on_postgresql_is_held_by_one_connection_at_a_time(postgres):
    _never_together([open_storage(postgres) for _ in range(3)], name=f"lock-test-{time.time_ns()}")


def test_study_lock_through_the_storage_api_is_held_by_one_at_a_time_and_leaves_nothing():
    storage = optuna.storages.InMemoryStorage()  # no SQL engine: the lock is a study of its own
    _never_together([storage, storage, storage])
    assert optuna.get_all_study_summaries(storage, include_best_trial=False) == []


def test_study_lock_of_a_dead_holder_through_the_storage_api_is_taken_over():
    storage = optuna.storages.InMemoryStorage()
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = round(psutil.Process(child.pid).create_time(), 2)
    child.wait()
    dead = {**SearchProcess.current().to_json(), "pid": child.pid, "started": started, "token": "x"}
    lock_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], LOCK_STUDY_PREFIX + "shared")
    storage.set_study_system_attr(lock_id, _lock._LOCK_OWNER, {**dead, "heartbeat": time.time()})
    taken = threading.Event()

    def take() -> None:
        with study_lock(storage, "shared"):
            taken.set()

    thread = threading.Thread(target=take)
    thread.start()
    thread.join(timeout=30)
    assert taken.is_set()  # its holder is gone: the lock was taken over, not waited for


def test_study_lock_left_without_a_holder_is_taken_over_after_the_grace(monkeypatch):
    monkeypatch.setattr(_liveness, "GRACE_SECONDS", 0.3)
    storage = optuna.storages.InMemoryStorage()
    storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], LOCK_STUDY_PREFIX + "shared")  # creator died
    started = time.monotonic()
    with study_lock(storage, "shared"):
        waited = time.monotonic() - started
    assert waited >= 0.3
    assert optuna.get_all_study_summaries(storage, include_best_trial=False) == []


@pytest.mark.parametrize("name, lock", [("autotune-lock:demo", True), ("demo", False), ("my-autotune-lock", False)])
def test_lock_studies_are_told_by_their_name(name, lock):
    assert is_lock_study(name) is lock
