"""Data-parallel processes, for trials and full runs alike: torch.distributed's launcher (torchrun) run
in this process, and, inside a rank, the process group, the rank's device, and the reductions that turn
each rank's figures into the group's.

A data-parallel trial (or ``autotune train --nproc-per-trial N``) is ``world_size`` processes started by
``launch``: a standalone c10d rendezvous on a free port, no restarts. Each rank measures its own windows;
at each window's edge the ranks agree on the group's figures: samples and units summed over ranks,
seconds the slowest rank's, memory the largest rank's. Every rank computes the same figures from the
same reductions, so every rank takes the same decisions (how many steps the next window runs, when the
measurement is done) and the ranks' collectives never go out of step.

Outside a process group (a single-process trial) every reduction returns its input unchanged.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import sys
from collections.abc import Sequence
from typing import Literal, NoReturn

import torch

Backend = Literal["gloo", "nccl"]

# Forces the backend (gloo or nccl) where the default choice is not wanted.
BACKEND_ENV = "AUTOTUNE_DDP_BACKEND"
_MIN_GROUP_TIMEOUT_SECONDS = 60.0  # a collective waits at most this long (or the trial's timeout, if longer)


@dataclasses.dataclass(frozen=True)
class Group:
    """This process's place in the trial's process group (world_size 1: no group)."""

    rank: int = 0
    world_size: int = 1
    backend: str | None = None

    @classmethod
    def current(cls) -> Group:
        """The process group this process belongs to, as torch.distributed has it initialised."""
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            return cls()
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), backend=str(dist.get_backend()))

    @property
    def is_group(self) -> bool:
        return self.world_size > 1

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over the ranks."""
        return self._reduce(values, "sum")

    def max(self, values: Sequence[float]) -> list[float]:
        """Each value's largest over the ranks."""
        return self._reduce(values, "max")

    def mean(self, values: Sequence[float]) -> list[float]:
        """Each value's mean over the ranks."""
        return [value / self.world_size for value in self.sum(values)]

    def _reduce(self, values: Sequence[float], how: Literal["sum", "max"]) -> list[float]:
        if not self.is_group:
            return [float(value) for value in values]
        import torch.distributed as dist

        # float64: sample counts and byte counts stay exact. nccl reduces device tensors, gloo host ones;
        # reading the result back (tolist) synchronises, at window edges only.
        device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")
        tensor = torch.tensor([float(value) for value in values], dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if how == "sum" else dist.ReduceOp.MAX)
        return [float(value) for value in tensor.tolist()]


def local_rank() -> int:
    """This rank's index on its machine, as torch.distributed's launcher sets it (0 outside a group)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank_device(requested: str, local: int | None = None) -> torch.device:
    """The device of the rank with local index ``local``: ``cuda:<local_rank>`` on a CUDA machine, and
    ``cuda:<local_rank mod the GPUs>`` where there are fewer GPUs than ranks (ranks then share a GPU);
    the requested device itself otherwise (the CPU)."""
    device = torch.device(requested)
    if device.type != "cuda":
        return device
    local = local_rank() if local is None else local
    return torch.device("cuda", local % max(1, torch.cuda.device_count()))


def choose_backend(device: torch.device, world_size: int) -> Backend:
    """nccl where every rank has a GPU of its own; gloo on the CPU, and where ranks share a GPU (NCCL
    refuses two ranks on one GPU: "Duplicate GPU detected"; gloo reduces CUDA tensors through the host).
    ``AUTOTUNE_DDP_BACKEND`` forces one."""
    forced = os.environ.get(BACKEND_ENV, "").strip().lower()
    if forced in ("gloo", "nccl"):
        return "nccl" if forced == "nccl" else "gloo"
    if device.type == "cuda" and torch.cuda.device_count() >= world_size:
        return "nccl"
    return "gloo"


def start_group(requested_device: str, timeout_seconds: float) -> Group:
    """The trial's process group, joined through the launcher's environment (RANK, WORLD_SIZE,
    MASTER_ADDR, MASTER_PORT): this rank's device selected first. A collective that waits longer than
    the trial's timeout raises instead of hanging (the parent ends the trial by then anyway)."""
    import torch.distributed as dist

    world_size = int(os.environ["WORLD_SIZE"])
    device = rank_device(requested_device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = choose_backend(device, world_size)
    timeout = datetime.timedelta(seconds=max(_MIN_GROUP_TIMEOUT_SECONDS, timeout_seconds))
    dist.init_process_group(backend=backend, timeout=timeout)
    return Group.current()


def exit_rank(code: int) -> NoReturn:
    """End this rank's process with ``code``, its output flushed, without the interpreter's teardown.

    A gloo group's worker thread drops each finished collective's work on its own, and dropping it takes
    the GIL (the work holds Python objects); while the interpreter finalises, taking the GIL ends the
    thread, which std::terminate turns into SIGABRT ("terminate called without an active exception"):
    a rank that finished would be reported as killed. Leaving at once gives the launcher the rank's true
    exit (a process group's files and sockets are the kernel's to close)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


LAUNCHER_PID_ENV = "AUTOTUNE_LAUNCHER_PID"  # read by each rank: the process it must die with
_MONITOR_INTERVAL_SECONDS = 0.1  # how often the launcher checks its ranks (a dead one ends the group)


def torchrun_arguments(world_size: int, command: Sequence[str]) -> list[str]:
    """torchrun's arguments for ``world_size`` ranks of ``command`` on this machine (a module: ``-m
    NAME ARGS...``, or a script and its arguments)."""
    return [
        "--standalone",  # c10d rendezvous on localhost, on a free port
        f"--nproc-per-node={world_size}",
        "--max-restarts=0",  # a failed rank fails the trial; a restart would measure something else
        f"--monitor-interval={_MONITOR_INTERVAL_SECONDS}",
        *command,
    ]


def threads_per_rank(world_size: int) -> int:
    """CPU threads each rank's intra-op pool gets where OMP_NUM_THREADS is not set: this machine's
    cores shared out (torchrun's own default, one thread, would starve a CPU rank)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // max(1, world_size))


def launch(world_size: int, command: Sequence[str]) -> dict[int, str]:
    """Run ``command`` as ``world_size`` ranks through torch.distributed.run and wait for them; the
    failed ranks' exit (``exit code N`` or ``signal NAME``) by rank, empty when every rank exited 0."""
    from torch.distributed import run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    os.environ[LAUNCHER_PID_ENV] = str(os.getpid())
    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_rank(world_size)))
    try:
        run.main(torchrun_arguments(world_size, command))
    except ChildFailedError as exc:
        return {rank: _how(failure.exitcode, failure.signal_name()) for rank, failure in exc.failures.items()}
    return {}


def first_cause(failures: dict[int, str]) -> tuple[int, str]:
    """The failed rank that ended the group, and how: a rank killed by a signal (SIGKILL, SIGSEGV,
    SIGABRT) first, for no peer's failure makes a rank die that way; then a rank that exited with an
    error (a peer that lost its group exits so too, which is why a signal comes first); the ranks the
    launcher itself ended with SIGTERM last. The lowest rank among equals."""

    def order(item: tuple[int, str]) -> tuple[int, int]:
        rank, how = item
        return (0 if killed_by_signal(how) else 2 if how == "signal SIGTERM" else 1), rank

    return min(failures.items(), key=order)


def killed_by_signal(how: str) -> bool:
    """Whether a rank's end (as ``launch`` words it) is a signal the launcher did not send."""
    return how.startswith("signal") and how != "signal SIGTERM"


def _how(exitcode: int, signal_name: str) -> str:
    """A failed rank's end in words: the signal that killed it, or its exit code."""
    if exitcode < 0:
        return f"signal {signal_name}"
    return f"exit code {exitcode}"
