"""Whether a search process is alive: who it is (its host, machine and pid), how often it beats its
heartbeat, and when one is taken for dead. Read by autotune.study._recovery (the trials of processes that
are gone) and by the study lock through a storage without SQL (a holder that is gone)."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Any

import psutil

HEARTBEAT_SECONDS = 10.0  # how often a search process says it is alive
GRACE_SECONDS = 60.0  # a process on another machine silent for longer is taken for dead
PROCESS_KEY = "autotune:process:"  # study system attributes: one per search process, with its heartbeat


@dataclasses.dataclass(frozen=True)
class SearchProcess:
    """One search process: where it runs, and how to tell it from a later process with its pid."""

    host: str
    machine: str  # host name, boot and pid namespace: containers that share a host name differ here
    pid: int
    started: float  # the process's start time (seconds since the epoch)

    @classmethod
    def current(cls) -> SearchProcess:
        return cls(socket.gethostname(), machine(), os.getpid(), round(psutil.Process().create_time(), 2))

    @property
    def key(self) -> str:
        return f"{PROCESS_KEY}{self.machine}:{self.pid}:{self.started}"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def gone(info: dict[str, Any], now: float) -> str | None:
    """Why a registered search process is taken for dead, or None while it is alive."""
    where = f"pid {info['pid']} on {info['host']}"
    if info.get("phase") == "done":
        return f"its search process ({where}) stopped while it ran"
    if info.get("machine") == machine():
        try:
            process = psutil.Process(info["pid"])
            same = abs(process.create_time() - info["started"]) < 1.0  # not a later process with the same pid
            if same and process.status() != psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            pass
        except psutil.AccessDenied:  # another user's process with this pid: not for us to judge
            return None
        return f"its search process ({where}) stopped while it ran"
    silent = now - float(info.get("heartbeat", 0.0))
    if silent <= GRACE_SECONDS:
        return None
    return f"its search process ({where}) sent no heartbeat for {silent:.0f}s"


@functools.lru_cache(maxsize=1)
def machine() -> str:
    """This machine, as search processes on it see it: the host name, the boot, the pid namespace."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        pass
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:16]


_CLOCK_QUERIES = {  # the server's clock now, in seconds since the epoch
    "postgresql": "SELECT EXTRACT(EPOCH FROM clock_timestamp())",
    "mysql": "SELECT UNIX_TIMESTAMP(NOW(6))",
}


def database_time(storage: object) -> float:
    """Seconds since the epoch by the database server's clock, for heartbeats that processes on
    several machines write and judge: their own clocks may disagree by more than the grace period.
    SQLite's processes share one machine (and its clock); a storage without an engine (an
    ``autotune proxy``: Optuna's gRPC storage proxy has no call that reads the server's clock) has no
    server clock to ask, and this machine's is used: workers through a proxy need clocks that agree
    to well within the grace period (NTP does). Asked again through a server's restart."""
    import sqlalchemy

    engine = getattr(storage, "engine", None)
    query = _CLOCK_QUERIES.get(engine.dialect.name) if engine is not None else None
    if engine is None or query is None:
        return time.time()

    def ask() -> float:
        with engine.connect() as connection:
            return float(connection.execute(sqlalchemy.text(query)).scalar_one())

    retry = getattr(storage, "retry", None)
    return ask() if retry is None else float(retry(ask))
