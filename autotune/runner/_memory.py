"""Resident memory of a trial process and its descendants (DataLoader workers), sampled."""

from __future__ import annotations

import os
import resource
import signal
import sys

import psutil


class ProcessTree:
    """The trial process and every process it started; sampled, and killed as a whole.

    The figure is the trial process's resident set plus each descendant's private
    resident memory (RSS less shared file-backed pages), so the torch libraries that
    forked workers map again are counted once.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.root = psutil.Process(pid)
        self.seen: dict[int, psutil.Process] = {pid: self.root}
        self.peak_bytes = 0

    def sample(self) -> int:
        """The tree's resident memory now; the peak so far is kept. Cheap enough to run every 50 ms
        beside a trial on a 2-core machine: on Linux the descendants come from the kernel's
        per-thread children lists (a few small reads), not from a scan of every process."""
        try:
            if _PROC_CHILDREN:
                processes = [self.root, *filter(None, map(self._process, _descendants(self.pid)))]
            else:
                processes = [self.root, *self.root.children(recursive=True)]
        except (psutil.Error, ProcessLookupError):  # the trial process is gone
            processes = [p for p in self.seen.values() if p.pid != self.pid]
        total = 0
        for process in processes:
            self.seen.setdefault(process.pid, process)
            try:
                info = process.memory_info()
            except psutil.Error:
                continue
            shared = getattr(info, "shared", 0)
            total += info.rss if process.pid == self.pid else max(0, info.rss - shared)
        self.peak_bytes = max(self.peak_bytes, total)
        return total

    def _process(self, pid: int) -> psutil.Process | None:
        if pid not in self.seen:
            try:
                self.seen[pid] = psutil.Process(pid)
            except psutil.Error:  # exited meanwhile
                return None
        return self.seen[pid]

    def kill(self) -> None:
        """SIGKILL the process group and every descendant seen, including any that left the group (the
        ranks of a data-parallel trial run in sessions of their own): the descendants are listed first,
        while the root is alive and they are still its children."""
        descendants = self._alive()
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for process in [*descendants, *self._alive()]:
            try:
                process.kill()
            except psutil.Error:
                pass

    def leftovers(self) -> list[int]:
        """PIDs of processes of this tree still running (after kill and wait: none)."""
        return [process.pid for process in self._alive()]

    def _alive(self) -> list[psutil.Process]:
        try:
            self.seen.update({p.pid: p for p in self.root.children(recursive=True)})
        except psutil.Error:
            pass
        alive = []
        for process in self.seen.values():
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
            except psutil.Error:
                continue
        return alive


class GroupTree(ProcessTree):
    """A data-parallel trial: the launcher, its ranks (its children) and theirs. Killed as a whole like
    any tree; its figure is the largest rank's memory (the rank and its DataLoader workers), as a
    memory budget holds per device: the group runs when each of its ranks fits."""

    def __init__(self, pid: int) -> None:
        super().__init__(pid)
        self.ranks: dict[int, ProcessTree] = {}

    def sample(self) -> int:
        """The largest rank's resident memory now; the largest rank's peak so far is kept."""
        try:
            if _PROC_CHILDREN:
                children = _children_of_threads(self.pid, root=True)
            else:
                children = [child.pid for child in self.root.children()]
        except (psutil.Error, ProcessLookupError):  # the launcher is gone: its ranks as last seen
            children = []
        for pid in children:
            if pid not in self.ranks:
                try:
                    self.ranks[pid] = ProcessTree(pid)
                except psutil.Error:  # exited meanwhile
                    continue
        largest = 0
        for rank in self.ranks.values():
            largest = max(largest, rank.sample())
            self.seen.update(rank.seen)
        self.peak_bytes = max([self.peak_bytes, *(rank.peak_bytes for rank in self.ranks.values())])
        return largest


# Linux kernels built with CONFIG_PROC_CHILDREN (the usual distributions) list each thread's children.
_PROC_CHILDREN = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def _descendants(pid: int) -> list[int]:
    """Every descendant of ``pid``, from the per-thread children lists; ProcessLookupError when
    ``pid`` itself is gone. A descendant that exits meanwhile drops out."""
    found: list[int] = []
    queue = _children_of_threads(pid, root=True)
    while queue:
        child = queue.pop()
        found.append(child)
        queue.extend(_children_of_threads(child))
    return found


def _children_of_threads(pid: int, root: bool = False) -> list[int]:
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        if root:
            raise ProcessLookupError(pid) from None
        return []  # exited meanwhile
    children: list[int] = []
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children") as listing:
                children.extend(int(value) for value in listing.read().split())
        except OSError:  # the thread ended meanwhile
            continue
    return children


def process_peak_rss() -> int:
    """This process's own peak resident memory. On Linux, VmHWM: ru_maxrss survives exec(), so
    it would report the parent's peak when the parent was bigger."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, others KiB
