"""``autotune dashboard``: optuna-dashboard on the same storage as ``autotune search``."""

from __future__ import annotations

import contextlib
import errno
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from autotune.exceptions import UsageError
from autotune.store._storage import open_storage


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        """One line per request would bury the URL; errors still reach the terminal."""


def serve(
    storage: str | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve optuna-dashboard until interrupted (Ctrl-C returns normally)."""
    import optuna_dashboard

    app = optuna_dashboard.wsgi(open_storage(storage, create=False))  # read-only: creates no database
    try:
        server = make_server(host, port, app, handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(f"port {port} on {host} is already in use; pick another with --port") from None
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    with server, _stopped_by_signals(server):
        if on_ready is not None:
            on_ready(f"http://{host}:{server.server_port}/dashboard/")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


@contextlib.contextmanager
def _stopped_by_signals(server: Any) -> Iterator[None]:
    """Ctrl-C (SIGINT) and SIGTERM stop the server, even where SIGINT was inherited as ignored
    (a process started in the background by a shell without job control), and even in the middle
    of a request: wsgiref's handler swallows every exception a request raises, KeyboardInterrupt
    included, so the signal asks serve_forever to stop (from a thread, as shutdown() requires)
    rather than raising."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
