"""The study lock: one process at a time, across every process sharing a storage, for check-then-write
steps on one study (enqueue the baseline once, recover a dead search's trial once).

PostgreSQL: a session advisory lock; MySQL: a named lock (both released by the server when the
process dies); SQLite: a file lock beside the database file (its processes share one machine). A
storage without an engine (``autotune proxy``, Optuna's gRPC storage proxy) has only Optuna's storage
API, where creating a study is atomic (a name is unique): the lock is a study of its own,
``autotune-lock:<study>``, that exists while it is held, with its holder and a heartbeat in its system
attributes; a waiter that finds its holder dead (by the search processes' liveness rules) takes it over.
A lock study whose creation the database committed but whose reply was lost has no holder written: it
is taken over once it has been seen without one for the grace period (60 s lost, not the lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK_STUDY_PREFIX = "autotune-lock:"  # the studies that are study locks through a storage without an engine
_LOCK_OWNER = "autotune:lock-owner"  # the lock study's system attribute: its holder and heartbeat
_LONGEST_POLL = 1.0  # seconds between a waiter's looks at a lock held by another process, at most


def is_lock_study(name: str) -> bool:
    """Whether the study ``name`` is a study lock (hidden from the study listings)."""
    return name.startswith(LOCK_STUDY_PREFIX)


@contextlib.contextmanager
def study_lock(storage: Any, study_name: str) -> Iterator[None]:
    """Held by one process at a time across every process sharing ``storage`` (see the module).

    A database server's restart while the lock is taken is waited out (``ReconnectingStorage.retry``);
    one while it is held ends the lock with its connection: the step under it finishes (its writes go
    through other connections, made again through the outage), a line says that it was not exclusive
    to the end, and the lock is not released twice.
    """
    engine = getattr(storage, "engine", None)
    if engine is None:
        with _storage_api_lock(storage, study_name):
            yield
        return
    key = int.from_bytes(hashlib.blake2b(f"autotune:{study_name}".encode(), digest_size=8).digest(), "big", signed=True)
    if engine.dialect.name == "postgresql":
        with _server_lock(storage, "SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)", {"key": key}):
            yield
    elif engine.dialect.name == "mysql":
        name = f"autotune:{key:x}"
        with _server_lock(storage, "SELECT GET_LOCK(:name, -1)", "SELECT RELEASE_LOCK(:name)", {"name": name}):
            yield
    elif engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        path = Path(engine.url.database).expanduser()
        with open(path.with_name(path.name + ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed, or the process dies
            yield
    else:  # an in-memory database lives in one process
        yield


@contextlib.contextmanager
def _server_lock(storage: Any, take: str, release: str, arguments: dict[str, Any]) -> Iterator[None]:
    """A lock a database server holds for one connection, taken through an outage."""
    import sqlalchemy

    from autotune.store._reconnect import is_connection_error

    engine = storage.engine

    def connect_and_take() -> Any:
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            connection.execute(sqlalchemy.text(take), arguments)
        except BaseException:
            connection.close()
            raise
        return connection

    retry = getattr(storage, "retry", None)
    connection = connect_and_take() if retry is None else retry(connect_and_take)
    try:
        yield
    finally:
        try:
            connection.execute(sqlalchemy.text(release), arguments)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            # The server ended the connection, and the lock with it: nothing is left to release.
            where = getattr(getattr(storage, "outage", None), "where", engine.url.render_as_string(hide_password=True))
            print(
                f"storage {where}: the study lock's connection was lost while it was held; the step under it "
                "went on without it",
                file=sys.stderr,
                flush=True,
            )
        finally:
            connection.close()


@contextlib.contextmanager
def _storage_api_lock(storage: Any, study_name: str) -> Iterator[None]:
    """The lock as a study of its own (see the module), held while the body runs and beaten from a
    thread, so that a holder on another machine is not taken for dead while it holds the lock long."""
    from autotune.store._liveness import HEARTBEAT_SECONDS

    name = LOCK_STUDY_PREFIX + study_name
    token = uuid.uuid4().hex
    lock_id = _take(storage, name, token)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            try:
                storage.set_study_system_attr(lock_id, _LOCK_OWNER, _owner(storage, token))
            except KeyError:  # taken over as dead: this process was silent past the grace period
                return
            except Exception:  # the storage is unreachable now: the next beat, or the waiters' grace
                continue

    thread = threading.Thread(target=beat, name="autotune-lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        try:
            storage.delete_study(lock_id)
        except KeyError:  # taken over meanwhile: nothing of ours to release
            pass


def _owner(storage: Any, token: str) -> dict[str, Any]:
    from autotune.store._liveness import SearchProcess, database_time

    return {**SearchProcess.current().to_json(), "token": token, "heartbeat": database_time(storage)}


def _take(storage: Any, name: str, token: str) -> int:
    """The lock study's id, once this process created it."""
    import optuna

    directions = [optuna.study.StudyDirection.MINIMIZE]
    ownerless: dict[int, float] = {}  # lock studies seen without a holder, since when (time.monotonic())
    poll = 0.02
    while True:
        try:
            lock_id = storage.create_new_study(directions, name)
        except optuna.exceptions.DuplicatedStudyError:
            _take_over_if_dead(storage, name, ownerless)
            time.sleep(poll)
            poll = min(poll * 2, _LONGEST_POLL)
            continue
        storage.set_study_system_attr(lock_id, _LOCK_OWNER, _owner(storage, token))
        return lock_id


def _take_over_if_dead(storage: Any, name: str, ownerless: dict[int, float]) -> None:
    """Remove the lock study ``name`` where its holder is dead, or silent past the grace period (a
    holder that died between creating it and writing its name is silent from the start)."""
    from autotune.store._liveness import GRACE_SECONDS, database_time, gone

    def holder() -> tuple[int, dict[str, Any] | None] | None:
        try:
            lock_id = storage.get_study_id_from_name(name)
            return lock_id, storage.get_study_system_attrs(lock_id).get(_LOCK_OWNER)
        except KeyError:  # released meanwhile
            return None

    seen = holder()
    if seen is None:
        return
    lock_id, owner = seen
    if owner is None:
        if time.monotonic() - ownerless.setdefault(lock_id, time.monotonic()) <= GRACE_SECONDS:
            return
    elif gone(owner, database_time(storage)) is None:
        return
    # Looked at again just before: SQLite may give a new lock study the id of the one deleted, and
    # the token tells the dead holder's lock from a live one's.
    if holder() != seen:
        return
    try:
        storage.delete_study(lock_id)
    except KeyError:  # another waiter took it over first
        pass
