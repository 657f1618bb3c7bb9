"""Scratch folders: each trial's TMPDIR, removed after the trial, swept when a dead parent left one.

The parent holds a lock on the folder's owner file for the trial's whole life; a folder whose
owner file can be locked by anyone else has lost its parent (killed with SIGKILL, a lost job),
so any process still using it is killed and the folder removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator

import psutil

PREFIX = "autotune-trial-"
_OWNER_FILE = ".owner"
# multiprocessing makes Unix sockets in TMPDIR (<scratch>/pymp-XXXXXXXX/listener-XXXXXXXX, at most 107
# characters): from a deeper temporary folder, DataLoader workers fail to send their batches and hang.
_MAX_ROOT_LENGTH = 50
_SHORT_ROOT = "/tmp"
# A folder without an owner file is being made right now, or was made by an older autotune.
_UNOWNED_GRACE_SECONDS = 600.0


@contextlib.contextmanager
def scratch_folder() -> Iterator[str]:
    """A fresh folder under the system's temporary folder, locked by this process until it is removed."""
    path = tempfile.mkdtemp(prefix=PREFIX, dir=_root())
    pending = os.path.join(path, _OWNER_FILE + ".new")
    owner = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(owner, fcntl.LOCK_EX)
        os.write(owner, f"{os.getpid()}\n".encode())
        os.rename(pending, os.path.join(path, _OWNER_FILE))  # visible to sweepers only once locked
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(owner)


def sweep_stale_scratch() -> list[str]:
    """Remove the scratch folders (of this user) whose parent process is gone; returns their paths."""
    removed: list[str] = []
    entries = []
    for root in {tempfile.gettempdir(), _root()}:
        try:
            entries += [entry for entry in os.scandir(root) if entry.name.startswith(PREFIX)]
        except OSError:
            continue
    for entry in entries:
        try:
            if not entry.is_dir(follow_symlinks=False) or entry.stat().st_uid != os.getuid():
                continue
            owner = os.open(os.path.join(entry.path, _OWNER_FILE), os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            if _age_seconds(entry.path) > _UNOWNED_GRACE_SECONDS:
                _remove(entry.path)
                removed.append(entry.path)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(owner)  # its parent holds it: the trial is running
            continue
        try:
            _remove(entry.path)
            removed.append(entry.path)
        finally:
            os.close(owner)
    return removed


def _root() -> str:
    """The system's temporary folder, or /tmp when its path is too long for multiprocessing's sockets."""
    root = tempfile.gettempdir()
    if len(root) > _MAX_ROOT_LENGTH and os.path.isdir(_SHORT_ROOT) and os.access(_SHORT_ROOT, os.W_OK):
        return _SHORT_ROOT
    return root


def _remove(path: str) -> None:
    """Kill whatever still runs with this folder as its TMPDIR (a trial the watchdogs missed), then remove it."""
    users = []
    for process in psutil.process_iter():
        try:
            if process.uids().real == os.getuid() and process.environ().get("TMPDIR") == path:
                users.append(process)
        except psutil.Error:
            continue
    for process in users:
        try:
            process.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(users, timeout=2)
    shutil.rmtree(path, ignore_errors=True)


def _age_seconds(path: str) -> float:
    try:
        return time.time() - os.stat(path).st_mtime
    except OSError:
        return 0.0
