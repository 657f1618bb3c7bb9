"""Study storage: the SQLite default, any SQLAlchemy URL, and one-line errors when it cannot open."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from autotune.exceptions import StorageError, StudyError

if TYPE_CHECKING:
    import optuna

DEFAULT_STORAGE = "sqlite:///studies/autotune.db"

# Query arguments that carry a secret (libpq's password and sslpassword, and the like).
_SECRET_ARGUMENT = re.compile(r"([?&](?:[^=&#]*pass[^=&#]*|pwd|secret|token)=)[^&#]*", re.IGNORECASE)
_NETLOC = re.compile(r"^(.*?://)([^/?#]+)")


def open_storage(url: str | None = None, *, create: bool = True) -> optuna.storages.RDBStorage:
    """Open the storage at ``url``; unreachable servers are one clear error.

    With ``create`` (``autotune search``), a SQLite file and its folder are created as needed;
    without it (the read-only commands), a SQLite file that does not exist is an error and
    nothing is written to disk.
    """
    import optuna
    import sqlalchemy.exc

    url = url or DEFAULT_STORAGE
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise StorageError(f"storage {redact(url)!r}: not a database URL (example: {DEFAULT_STORAGE})") from None
    except ValueError:  # sqlalchemy reads the port with int()
        raise StorageError(
            f"storage {redact(url)!r}: not a database URL, its port is not a number (example: {DEFAULT_STORAGE})"
        ) from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        path = Path(parsed.database).expanduser()
        if create:
            path.parent.mkdir(parents=True, exist_ok=True)
        elif not path.is_file():
            raise StorageError(
                f"storage {redact(url)}: no such database file {str(path)!r}; nothing was searched there"
            )
    engine_kwargs = server_engine_kwargs(parsed.get_backend_name())
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except ImportError as exc:  # Optuna wraps the missing driver module in an ImportError
        missing = getattr(exc.__cause__, "name", None) or str(exc)
        raise StorageError(
            f"storage {redact(url)}: its database driver is not installed ({missing}); "
            "for PostgreSQL: pip install 'autotune[postgres]'"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StorageError(f"storage {redact(url)}: cannot connect: {_first_line(exc)}") from None


# A search process holds few connections at once (its trial loop, the heartbeat thread, a study lock):
# a small pool keeps many workers on one server under its connection limit.
POOL_SIZE = 2
POOL_OVERFLOW = 3


def server_engine_kwargs(backend: str) -> dict[str, object]:
    """SQLAlchemy engine options for a database server (PostgreSQL, MySQL): every connection is
    pinged as it leaves the pool (``pool_pre_ping``), so a server that restarted, or dropped an idle
    connection, costs a reconnect rather than the search; the pool is small, and connections are
    renewed after half an hour. SQLite keeps Optuna's defaults."""
    if backend not in ("postgresql", "mysql"):
        return {}
    kwargs: dict[str, object] = {
        "pool_pre_ping": True,
        "pool_size": POOL_SIZE,
        "max_overflow": POOL_OVERFLOW,
        "pool_recycle": 1800,
    }
    if backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 10}
    return kwargs


_CLOCK_QUERIES = {  # the server's clock now, in seconds since the epoch
    "postgresql": "SELECT EXTRACT(EPOCH FROM clock_timestamp())",
    "mysql": "SELECT UNIX_TIMESTAMP(NOW(6))",
}


def database_time(storage: object) -> float:
    """Seconds since the epoch by the database server's clock, for heartbeats that processes on
    several machines write and judge: their own clocks may disagree by more than the grace period.
    SQLite's processes share one machine (and its clock); a storage without an engine (Optuna's
    gRPC proxy) has no server clock to ask, and this machine's is used."""
    import sqlalchemy

    engine = getattr(storage, "engine", None)
    query = _CLOCK_QUERIES.get(engine.dialect.name) if engine is not None else None
    if engine is None or query is None:
        return time.time()
    with engine.connect() as connection:
        return float(connection.execute(sqlalchemy.text(query)).scalar_one())


def storage_exists(url: str | None = None) -> bool:
    """False for a SQLite file that does not exist yet (nothing was searched there); True otherwise."""
    import sqlalchemy.exc

    try:
        parsed = sqlalchemy.engine.make_url(url or DEFAULT_STORAGE)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return True  # open_storage says what is wrong with it
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return True
    return Path(parsed.database).expanduser().is_file()


def load_study(name: str | None, url: str | None = None) -> optuna.Study:
    """An existing study; without a name, the storage's only study. Creates nothing."""
    import optuna

    storage = open_storage(url, create=False)
    names = [summary.study_name for summary in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    where = redact(url or DEFAULT_STORAGE)
    listing = ", ".join(sorted(names)) or "none"
    if name is None:
        if not names:
            raise StudyError(f"storage {where} has no studies; run 'autotune search' first")
        if len(names) > 1:
            raise StudyError(f"storage {where} has {len(names)} studies; pick one with --study ({listing})")
        name = names[0]
    if name not in names:
        raise StudyError(f"no study named {name!r} in {where} (studies: {listing})")
    return optuna.load_study(study_name=name, storage=storage)


def redact(url: str) -> str:
    """The URL with every secret hidden, for messages and export files: the password of
    ``user:password@``, secret query arguments (``?password=``), and the whole user and host part
    of a URL that does not parse (where the password is cannot be told)."""
    import sqlalchemy.exc

    try:
        shown = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError, TypeError):
        shown = _NETLOC.sub(r"\1***", url)
        if "://" not in shown and "@" in shown:  # no scheme: whatever precedes the host may be a secret
            shown = "***@" + shown.rpartition("@")[2]
    return _SECRET_ARGUMENT.sub(r"\1***", shown)


@contextlib.contextmanager
def study_lock(storage: optuna.storages.RDBStorage, study_name: str) -> Iterator[None]:
    """Held by one process at a time across every process sharing ``storage``: for check-then-write
    steps on one study (enqueue the baseline once, recover a dead search's trial once).

    PostgreSQL: a session advisory lock (released by the server if the process dies); MySQL: a named
    lock; SQLite: a file lock beside the database file (its processes share one machine).
    """
    import sqlalchemy

    engine = storage.engine
    key = int.from_bytes(hashlib.blake2b(f"autotune:{study_name}".encode(), digest_size=8).digest(), "big", signed=True)
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    elif engine.dialect.name == "mysql":
        name = f"autotune:{key:x}"
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(sqlalchemy.text("SELECT GET_LOCK(:name, -1)"), {"name": name})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:name)"), {"name": name})
    elif engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        path = Path(engine.url.database).expanduser()
        with open(path.with_name(path.name + ".lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file is closed, or the process dies
            yield
    else:  # an in-memory database lives in one process
        yield


def _first_line(exc: BaseException) -> str:
    original = getattr(exc, "orig", None) or exc
    text = " ".join(str(original).split("\n")[0].split())
    return text or type(original).__name__
