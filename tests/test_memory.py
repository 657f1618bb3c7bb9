"""ProcessTree: the resident memory of a process and its descendants, sampled; killed as a whole."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from autotune.runner import _memory
from autotune.runner._memory import ProcessTree

MB = 1000**2

# Touches 100 MiB (so that it is resident), then says so and sleeps.
_ALLOCATE = "import sys, time; ballast = b'x' * (100 * 1024 * 1024); print('ready', flush=True); time.sleep(120)"


def _start(code: str) -> subprocess.Popen:
    """A Python process in a session (and process group) of its own, as the runner starts trials."""
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.fixture
def started():
    """Start processes; whatever a test leaves running is killed afterwards."""
    processes: list[subprocess.Popen] = []

    def start(code: str) -> subprocess.Popen:
        process = _start(code)
        processes.append(process)
        return process

    yield start
    for process in processes:
        try:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
        except psutil.Error:
            pass
        process.kill()
        process.wait()


def _read_pids(process: subprocess.Popen, count: int) -> list[int]:
    assert process.stdout is not None
    return [int(process.stdout.readline()) for _ in range(count)]


def _sample_until(tree: ProcessTree, above: int, seconds: float = 30) -> None:
    give_up = time.monotonic() + seconds
    while tree.peak_bytes <= above and time.monotonic() < give_up:
        tree.sample()
        time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_gone(pids: list[int], seconds: float = 10) -> list[int]:
    """SIGKILL takes effect asynchronously: the pids still running after a moment."""
    give_up = time.monotonic() + seconds
    alive = [pid for pid in pids if _running(pid)]
    while alive and time.monotonic() < give_up:
        time.sleep(0.05)
        alive = [pid for pid in pids if _running(pid)]
    return alive


def test_process_tree_sample_peak_grows_with_allocation(started):
    process = started(_ALLOCATE)
    tree = ProcessTree(process.pid)
    first = tree.sample()
    assert first > 0

    assert process.stdout.readline().strip() == "ready"
    _sample_until(tree, above=100 * MB)

    assert tree.peak_bytes > 100 * MB
    assert tree.peak_bytes >= first
    assert tree.sample() > 100 * MB  # still held


def test_process_tree_sample_counts_descendants(started):
    # The process itself holds little; its child holds 100 MiB.
    code = textwrap.dedent(
        f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", {_ALLOCATE!r}], stdout=subprocess.PIPE, text=True)
        print(child.pid, flush=True)
        assert child.stdout.readline().strip() == "ready"
        print("ready", flush=True)
        time.sleep(120)
        """
    )
    process = started(code)
    [child] = _read_pids(process, 1)
    assert process.stdout.readline().strip() == "ready"
    tree = ProcessTree(process.pid)
    _sample_until(tree, above=100 * MB)

    assert tree.peak_bytes > 100 * MB
    assert psutil.Process(process.pid).memory_info().rss < 100 * MB  # the child's memory made the peak
    assert child in tree.seen


_TREE = textwrap.dedent(
    """
    import subprocess, sys, threading, time
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    parent = [sys.executable, "-c", "import subprocess, sys, time; "
              "child = subprocess.Popen(sys.argv[1:]); print(child.pid, flush=True); time.sleep(120)", *sleeper]
    middle = subprocess.Popen(parent, stdout=subprocess.PIPE, text=True)
    grandchild = int(middle.stdout.readline())
    from_thread = []
    thread = threading.Thread(target=lambda: from_thread.append(subprocess.Popen(sleeper)))
    thread.start()
    thread.join()
    print(middle.pid, grandchild, from_thread[0].pid, flush=True)
    time.sleep(120)
    """
)


@pytest.mark.skipif(not _memory._PROC_CHILDREN, reason="this kernel keeps no /proc/PID/task/TID/children lists")
def test_process_tree_descendants_from_the_kernel_lists_match_a_scan_of_every_process(started):
    # A child, its own child, and a child started from another thread of the process.
    process = started(_TREE)
    pids = [int(value) for value in process.stdout.readline().split()]

    found = _memory._descendants(process.pid)

    assert sorted(found) == sorted(pids)
    assert sorted(found) == sorted(child.pid for child in psutil.Process(process.pid).children(recursive=True))


@pytest.mark.parametrize("kernel_lists", [True, False])
def test_process_tree_sample_sees_every_descendant_either_way(started, monkeypatch, kernel_lists):
    if kernel_lists and not _memory._PROC_CHILDREN:
        pytest.skip("this kernel keeps no /proc/PID/task/TID/children lists")
    monkeypatch.setattr(_memory, "_PROC_CHILDREN", kernel_lists)
    process = started(_TREE)
    pids = [int(value) for value in process.stdout.readline().split()]
    tree = ProcessTree(process.pid)

    assert tree.sample() > 0
    assert set(tree.seen) == {process.pid, *pids}


def test_process_tree_sample_after_process_ended_is_zero_without_descendants(started):
    process = started("pass")
    tree = ProcessTree(process.pid)
    process.wait()

    assert tree.sample() == 0
    assert tree.leftovers() == []


def test_process_tree_kill_ends_process_and_children(started):
    # A child in the process group, and a grandchild that left it for a session of its own.
    code = textwrap.dedent(
        """
        import subprocess, sys, time
        sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
        child = subprocess.Popen(sleeper)
        escaped = subprocess.Popen(sleeper, start_new_session=True)
        print(child.pid, flush=True)
        print(escaped.pid, flush=True)
        time.sleep(120)
        """
    )
    process = started(code)
    child, escaped = _read_pids(process, 2)
    tree = ProcessTree(process.pid)
    tree.sample()  # sees both
    assert {process.pid, child, escaped} <= set(tree.seen)
    assert sorted(tree.leftovers()) == sorted([process.pid, child, escaped])

    tree.kill()
    process.wait()

    assert process.returncode == -9
    assert _wait_gone([child, escaped]) == []
    assert tree.leftovers() == []


def test_process_tree_kill_without_process_group_kills_seen_processes(started):
    # Not a group leader: os.killpg finds no group; the processes seen are killed one by one.
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], stdin=subprocess.DEVNULL)
    try:
        tree = ProcessTree(process.pid)
        tree.sample()
        tree.kill()
        process.wait(timeout=30)
        assert process.returncode == -9
        assert tree.leftovers() == []
    finally:
        process.kill()
        process.wait()
