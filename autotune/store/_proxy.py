"""``autotune proxy``: Optuna's gRPC storage proxy in front of one database, so that many workers share
a study through ``--storage grpc://HOST:PORT`` while the database sees one process's connections.

The proxy holds the database's storage as ``autotune search`` opens it (a server's restart is waited
out here, once, for every worker). What it cannot carry: Optuna's trial heartbeat (the gRPC client
has none, so workers through a proxy rely on autotune's own process heartbeat, a study attribute),
the database server's clock (workers judge heartbeats by their own clocks), and SQL locks (the study
lock is a study of its own; see ``_lock``).
"""

from __future__ import annotations

from collections.abc import Callable

from autotune.exceptions import StorageError
from autotune.store._storage import GRPC_SCHEME, open_storage, redact

STOP_GRACE_SECONDS = 5.0  # calls in flight when the proxy is stopped get this long to finish


def serve_proxy(
    storage: str | None, host: str = "127.0.0.1", port: int = 13000, *, on_ready: Callable[[str], None] | None = None
) -> None:
    """Serve ``storage`` to gRPC clients at ``host:port`` until Ctrl-C or SIGTERM, then stop cleanly:
    calls in flight finish (up to ``STOP_GRACE_SECONDS``), and this returns."""
    if storage is not None and storage.startswith(GRPC_SCHEME):
        raise StorageError(f"storage {redact(storage)}: a proxy serves a database, not another proxy")
    backend = open_storage(storage)  # a database that cannot be opened is refused before anything listens
    try:
        from optuna.storages._grpc.server import make_server
    except ImportError:
        raise StorageError("autotune proxy: the gRPC server is not installed; pip install 'autotune[grpc]'") from None
    import optuna

    from autotune.exceptions import sigterm_as_interrupt

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study created (study locks are studies)
    try:
        server = make_server(backend, host, port)
    except RuntimeError as exc:  # grpcio cannot bind the address (in use, or not this machine's)
        raise StorageError(f"autotune proxy: cannot listen on {host}:{port} ({exc})") from None
    server.start()
    try:
        with sigterm_as_interrupt():
            if on_ready is not None:
                on_ready(f"{GRPC_SCHEME}{host}:{port}")
            while server.wait_for_termination(timeout=1.0):  # True: timed out; woken each second, signals are seen
                pass
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the way a proxy is stopped
        pass
    finally:
        server.stop(STOP_GRACE_SECONDS).wait()
