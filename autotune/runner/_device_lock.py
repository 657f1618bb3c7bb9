"""One trial per device at a time, across every process of this user on this machine.

Two searches measuring on one device slow each other's trials, and both record bogus figures.
Each device has a lock file in the user's cache folder (``$AUTOTUNE_CACHE_DIR``, else
``$XDG_CACHE_HOME/autotune``, else ``~/.cache/autotune``); a trial holds it (``flock``) from its
process's start to its end. The kernel releases it when the holder dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

_POLL_SECONDS = 0.2  # how often a waiting process tries the lock again


def cache_folder() -> Path:
    """autotune's folder in the user's cache."""
    if os.environ.get("AUTOTUNE_CACHE_DIR"):
        return Path(os.environ["AUTOTUNE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autotune"


def lock_path(device: str) -> Path:
    return cache_folder() / "locks" / f"{_device_key(device)}.lock"


@contextlib.contextmanager
def device_lock(
    device: str, *, holder: str, on_wait: Callable[[str], None] | None = None, deadline: float | None = None
) -> Iterator[bool]:
    """Hold ``device``'s lock for the ``with`` block; yields False, without it, if ``deadline``
    (time.monotonic) passes while another process holds it. ``on_wait`` is told once, when waiting starts."""
    path = lock_path(device)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and on_wait is not None:
                    on_wait(f"waiting for {device}: {_describe_holder(path)} is running a trial on it")
                    told = True
                if deadline is not None and time.monotonic() >= deadline:
                    yield False
                    return
                time.sleep(_POLL_SECONDS)
        os.ftruncate(handle, 0)
        os.pwrite(handle, f"{os.getpid()} {holder}\n".encode(), 0)  # for the message of whoever waits
        yield True
    finally:
        os.close(handle)


def _describe_holder(path: Path) -> str:
    try:
        pid, _, what = path.read_text().strip().partition(" ")
    except OSError:
        pid, what = "", ""
    if not pid.isdigit():
        return "another autotune process"
    return f"another autotune process (pid {pid}{', ' + what if what else ''})"


def _device_key(device: str) -> str:
    """A name for the physical device: CUDA indices are mapped through CUDA_VISIBLE_DEVICES, and
    named by the card's UUID when torch can tell it, so that two processes that see the card
    under different indices still share one lock."""
    kind, _, index_text = device.partition(":")
    if kind != "cuda":
        return re.sub(r"[^A-Za-z0-9_.-]", "_", kind)
    index = int(index_text or 0)
    try:
        import torch

        return "cuda-" + re.sub(r"[^A-Za-z0-9_.-]", "_", str(torch.cuda.get_device_properties(index).uuid))
    except (ImportError, AttributeError, RuntimeError, AssertionError):
        visible = [entry.strip() for entry in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if entry.strip()]
        physical = visible[index] if index < len(visible) else str(index)
        return "cuda-" + re.sub(r"[^A-Za-z0-9_.-]", "_", physical)
