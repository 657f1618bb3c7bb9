"""Study storage: the SQLite default, any SQLAlchemy URL, and one-line errors when it cannot open."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autotune.exceptions import StorageError, StudyError, first_line
from autotune.store._liveness import database_time as database_time  # heartbeats' clock, imported from here too
from autotune.store._lock import is_lock_study
from autotune.store._lock import study_lock as study_lock  # where the search and the recovery import it from

if TYPE_CHECKING:
    import optuna

DEFAULT_STORAGE = "sqlite:///studies/autotune.db"

# Query arguments that carry a secret (libpq's password and sslpassword, and the like).
_SECRET_ARGUMENT = re.compile(r"([?&](?:[^=&#]*pass[^=&#]*|pwd|secret|token)=)[^&#]*", re.IGNORECASE)
_NETLOC = re.compile(r"^(.*?://)([^/?#]+)")


GRPC_SCHEME = "grpc://"  # an ``autotune proxy`` (Optuna's gRPC storage proxy): grpc://HOST:PORT
PROXY_WAIT_SECONDS = 10.0  # how long a worker waits for a proxy to answer before it says none does


def open_storage(
    url: str | None = None, *, create: bool = True, on_stale_trial: Callable[[Any, Any], None] | None = None
) -> Any:
    """Open the storage at ``url``; unreachable servers are one clear error.

    With ``create`` (``autotune search``), a SQLite file and its folder are created as needed;
    without it (the read-only commands), a SQLite file that does not exist is an error and
    nothing is written to disk.

    A database server's storage (PostgreSQL, MySQL) survives the server's restart (each call is
    made again through an outage of up to a minute: ``_reconnect.ReconnectingStorage``); given
    ``on_stale_trial`` (the search's ``_recovery.StaleTrialRetry``, Optuna's
    ``heartbeat_stale_trial_callback``), it beats Optuna's trial heartbeat while ``study.optimize`` runs
    a trial, and a trial whose heartbeat went silent is handed to it. SQLite keeps Optuna's plain
    RDBStorage: its processes share one machine, where autotune's own liveness check (the search
    process's pid) is surer than a heartbeat. ``grpc://HOST:PORT`` is an ``autotune proxy``: Optuna's GrpcStorageProxy.
    """
    import optuna
    import sqlalchemy.exc

    url = url or DEFAULT_STORAGE
    if url.startswith(GRPC_SCHEME):
        return _open_proxy(url)
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
        if parsed.get_backend_name() not in SERVER_BACKENDS:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        return _open_server(url, engine_kwargs, on_stale_trial)
    except ImportError as exc:  # Optuna wraps the missing driver module in an ImportError
        missing = getattr(exc.__cause__, "name", None) or str(exc)
        raise StorageError(
            f"storage {redact(url)}: its database driver is not installed ({missing}); "
            "for PostgreSQL: pip install 'autotune[postgres]'"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise StorageError(f"storage {redact(url)}: cannot connect: {first_line(exc)}") from None


def _open_server(url: str, engine_kwargs: dict[str, Any], on_stale_trial: Callable[[Any, Any], None] | None) -> Any:
    """A database server's storage: reconnecting through an outage, with Optuna's trial heartbeat
    where ``on_stale_trial`` takes its stale trials."""
    import optuna

    from autotune.store._liveness import GRACE_SECONDS, HEARTBEAT_SECONDS
    from autotune.store._reconnect import ReconnectingStorage

    heartbeat: dict[str, Any] = {}
    if on_stale_trial is not None:
        heartbeat = {
            "heartbeat_interval": int(HEARTBEAT_SECONDS),
            "grace_period": int(GRACE_SECONDS),
            "heartbeat_stale_trial_callback": on_stale_trial,
        }
    with warnings.catch_warnings():  # Optuna flags its heartbeat arguments experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return ReconnectingStorage(
            optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat), redact(url)
        )


def proxy_address(url: str) -> tuple[str, int]:
    """The host and port of a ``grpc://HOST:PORT`` URL; a one-line error where it has neither."""
    address = url[len(GRPC_SCHEME) :].rstrip("/")
    host, _, port = address.rpartition(":")
    host = host.strip("[]")  # an IPv6 address in brackets
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise StorageError(f"storage {redact(url)!r}: not a proxy address (example: grpc://127.0.0.1:13000)")
    return host, int(port)


def _open_proxy(url: str) -> Any:
    """Optuna's gRPC client of an ``autotune proxy``, once the proxy answers (GrpcStorageProxy
    itself would wait, silently, for ever at its first call)."""
    host, port = proxy_address(url)
    try:
        import grpc  # noqa: F401 - Optuna imports it lazily, at the first call
        import optuna
    except ImportError:
        raise StorageError(f"storage {url}: the gRPC client is not installed; pip install 'autotune[grpc]'") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.GrpcStorageProxy(host=host, port=port)
    try:
        storage.wait_server_ready(timeout=PROXY_WAIT_SECONDS)
    except ConnectionError:
        storage.close()
        raise StorageError(
            f"storage {url}: no proxy answers at {host}:{port} within {PROXY_WAIT_SECONDS:.0f}s "
            "(start one with 'autotune proxy --storage URL --port PORT')"
        ) from None
    return storage


# A search process holds few connections at once (its trial loop, the heartbeat thread, a study lock):
# a small pool keeps many workers on one server under its connection limit.
POOL_SIZE = 2
POOL_OVERFLOW = 3


SERVER_BACKENDS = ("postgresql", "mysql")


def server_engine_kwargs(backend: str) -> dict[str, object]:
    """SQLAlchemy engine options for a database server (PostgreSQL, MySQL): every connection is
    pinged as it leaves the pool (``pool_pre_ping``), so a server that restarted, or dropped an idle
    connection, costs a reconnect rather than the search; the pool is small, and connections are
    renewed after half an hour. SQLite keeps Optuna's defaults."""
    if backend not in SERVER_BACKENDS:
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


def storage_exists(url: str | None = None) -> bool:
    """False for a SQLite file that does not exist yet (nothing was searched there); True otherwise."""
    import sqlalchemy.exc

    if (url or "").startswith(GRPC_SCHEME):
        return True  # a proxy: open_storage says whether it answers
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
    names = study_names(storage)
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


def study_names(storage: Any) -> list[str]:
    """The names of the storage's studies, without the study locks of storages that have no engine."""
    import optuna

    summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
    return [summary.study_name for summary in summaries if not is_lock_study(summary.study_name)]


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
