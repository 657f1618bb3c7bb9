"""Trial processes forked from a warm process that has already imported torch and the harness.

Starting a Python interpreter and importing torch takes about two seconds on a small CPU, more
than half of a short trial that measures three one-second windows. Every trial still runs in a
process of its own, with nothing of an earlier trial in it: it is forked from a server process
(multiprocessing's forkserver) that only imported modules and never ran a tensor operation, so the
trial starts from the state a fresh interpreter has after its imports.

``AUTOTUNE_TRIAL_START=fresh`` starts each trial as a new interpreter instead (``python -m
autotune.runner._child``), as it is where the forkserver is unavailable (Windows).
"""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.context
import multiprocessing.popen_forkserver
import multiprocessing.reduction
import multiprocessing.spawn
import os
import sys
import types
from typing import Any

# What the server imports once. The workload's own module is not among them: importing user code
# in the server could start threads or touch a device, which a fork does not survive.
PRELOAD = [
    "autotune.runner._server_guard",  # first: the server dies with its parent from here on
    "torch",
    "torch._dynamo",  # imported by the first optimizer a trial builds: 2-3 s on a small CPU
    "autotune.training._apply",
    "autotune.workload._workload",
    "autotune.runner._child",
    "autotune.runner._harness",
    "autotune.runner._sweep",
]


# Libraries that import no user code, start no thread and touch no device when imported. Those the
# workload's module uses (loaded here to check it) are imported by the server as well, down to the
# submodules it takes names from: transformers' modeling code alone takes seconds to import.
WARM_LIBRARIES = (
    "numpy",
    "scipy",
    "transformers",
    "peft",
    "accelerate",
    "timm",
    "torchvision",
    "lightning",
    "pytorch_lightning",
    "torchmetrics",
    "safetensors",
    "tokenizers",
)


def preload_modules(workload_spec: str | None = None) -> list[str]:
    """What the server imports: autotune's trial side, and the warm libraries the workload's module
    uses, when that module is loaded in this process. Nothing else: a trial's resident memory
    counts what its server imported, as a fresh interpreter counts what it imports."""
    names = list(PRELOAD)
    module = _loaded_module(workload_spec) if workload_spec else None
    if module is not None:
        used = set()
        for value in list(vars(module).values()):
            name = value.__name__ if isinstance(value, types.ModuleType) else getattr(value, "__module__", None)
            if isinstance(name, str) and name.split(".")[0] in WARM_LIBRARIES and name in sys.modules:
                used.add(name)
        names += sorted(used)
    return names


def _loaded_module(spec: str) -> types.ModuleType | None:
    module_part = spec.rpartition(":")[0]
    if module_part.endswith(".py"):
        from autotune.workload._workload import file_module_name

        return sys.modules.get(file_module_name(module_part))
    return sys.modules.get(module_part)


def _serve(preload: list[str]) -> None:
    """The server runs with exactly ``preload`` imported; one started with other modules is replaced."""
    from multiprocessing import forkserver

    server = forkserver._forkserver
    if list(getattr(server, "_preload_modules", ()) or ()) == preload:
        return
    if getattr(server, "_forkserver_pid", None) is not None and hasattr(server, "_stop"):
        server._stop()
    multiprocessing.set_forkserver_preload(preload)
    os.environ["AUTOTUNE_POOL_PARENT"] = str(os.getpid())  # read by the server's guard (it inherits this)


def pooled() -> bool:
    """Whether trials are forked from the warm server (the default where forkserver exists)."""
    choice = os.environ.get("AUTOTUNE_TRIAL_START", "pool").strip().lower()
    return choice != "fresh" and "forkserver" in multiprocessing.get_all_start_methods()


class PassedFd:
    """A file descriptor handed to the trial process: sent to the server with the request (as
    multiprocessing sends a Connection's), received as a new descriptor in the trial."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return _received_fd, (multiprocessing.reduction.DupFd(self.fd),)


def _received_fd(dup: Any) -> int:
    return dup.detach()


class _TrialPopen(multiprocessing.popen_forkserver.Popen):
    """forkserver's Popen without the caller's ``__main__``: multiprocessing would run the
    parent's main script again in the child (the ``autotune`` command, pytest, a user's script)."""

    def _launch(self, process_obj: Any) -> None:
        real = multiprocessing.spawn.get_preparation_data

        def without_main(name: str) -> dict:
            data = real(name)
            data.pop("init_main_from_path", None)
            data.pop("init_main_from_name", None)
            return data

        multiprocessing.spawn.get_preparation_data = without_main
        try:
            super()._launch(process_obj)  # type: ignore[misc]  # Popen's private start step, extended
        finally:
            multiprocessing.spawn.get_preparation_data = real


class _TrialProcess(multiprocessing.context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj: Any) -> _TrialPopen:
        return _TrialPopen(process_obj)


class PooledProcess:
    """The trial process, with the part of subprocess.Popen's interface the runner uses."""

    def __init__(
        self, channel_fd: int, watchdog_fd: int, log_fd: int, job: str, env: dict[str, str], workload: str
    ) -> None:
        _serve(preload_modules(workload))
        self._process = _TrialProcess(
            target=_trial_main,
            args=(PassedFd(channel_fd), PassedFd(watchdog_fd), PassedFd(log_fd), job, env),
            name="autotune-trial",
        )
        self._process.start()
        self.pid = self._process.pid

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self) -> int | None:
        self._process.join()
        return self._process.exitcode

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode


def _trial_main(channel_fd: int, watchdog_fd: int, log_fd: int, job: str, env: dict[str, str]) -> None:
    """In the forked trial: the state `python -m autotune.runner._child` would have, then its main."""
    os.setsid()  # its own process group: killed as one, DataLoader workers included
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    os.environ.clear()
    os.environ.update(env)
    import sys
    import tempfile

    tempfile.tempdir = None  # TMPDIR is the trial's scratch folder now
    # multiprocessing's own temporary folder too (the parent's, copied into this process's config).
    multiprocessing.current_process()._config.pop("tempdir", None)  # type: ignore[attr-defined]
    # A fresh interpreter's default start method (multiprocessing set forkserver's for this child):
    # the DataLoader's workers start as they would in the user's own run.
    multiprocessing.set_start_method(None, force=True)
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(write_through=True)
    from autotune.runner._child import run

    run(channel_fd, watchdog_fd, job)


def server_pids() -> set[int]:
    """The warm server's process and multiprocessing's resource tracker, while they run: processes
    of the pool that outlive each trial (they end with the process that started them)."""
    from multiprocessing import forkserver, resource_tracker

    server: Any = forkserver._forkserver  # multiprocessing's own singletons: no public pid
    tracker: Any = resource_tracker._resource_tracker
    pids = {server._forkserver_pid, tracker._pid}
    return {pid for pid in pids if pid is not None}
