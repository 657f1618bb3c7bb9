"""autotune.runner._scratch: each trial's scratch folder (its TMPDIR), removed after the trial, and the sweep
that removes the folders a dead parent left, killing what still uses them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from autotune.runner._scratch import PREFIX, scratch_folder, sweep_stale_scratch

HOUR = 3600.0


@pytest.fixture
def temp_root(monkeypatch) -> Path:
    """The system's temporary folder is this test's own (short enough for multiprocessing's sockets)."""
    root = Path(tempfile.mkdtemp(prefix="at-", dir="/tmp"))
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def stale_folder(root: Path, *, owner: bool = True, age_seconds: float = 0.0) -> Path:
    """A scratch folder as a parent that died left it: an owner file nobody holds, or none at all."""
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=root))
    if owner:
        (path / ".owner").write_text("12345\n")
    (path / "pymp-left").mkdir()
    if age_seconds:
        then = time.time() - age_seconds
        os.utime(path, (then, then))
    return path


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# --- scratch_folder -------------------------------------------------------------------------------------


def test_scratch_folder_is_a_fresh_folder_under_the_temporary_folder_removed_after(temp_root):
    with scratch_folder() as path, scratch_folder() as other:
        assert Path(path).is_dir() and Path(other).is_dir() and path != other
        assert Path(path).parent == temp_root
        assert Path(path).name.startswith(PREFIX)
        assert (Path(path) / ".owner").read_text() == f"{os.getpid()}\n"
        (Path(path) / "pymp-x").mkdir()  # what a trial leaves in it
        (Path(path) / "pymp-x" / "listener").write_text("")
    assert not Path(path).exists() and not Path(other).exists()


def test_scratch_folder_is_removed_when_the_trial_raises(temp_root):
    with pytest.raises(RuntimeError), scratch_folder() as path:
        raise RuntimeError("the trial failed to start")
    assert not Path(path).exists()


def test_scratch_folder_under_a_deep_temporary_folder_goes_to_tmp(tmp_path, monkeypatch):
    # multiprocessing's sockets in TMPDIR may be 107 characters at most: a deep root would break them.
    deep = tmp_path / ("d" * 60)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    with scratch_folder() as path:
        assert Path(path).parent == Path("/tmp")
        assert len(path) < 60
    assert not Path(path).exists()


# --- sweep_stale_scratch -----------------------------------------------------------------------------------


def test_sweep_stale_scratch_removes_a_dead_parents_folder_and_what_still_uses_it(temp_root):
    # In a temporary folder of this test's own: another autotune process sweeping /tmp meanwhile (a search, a
    # test run) would remove the stale folder, and kill what uses it, before this sweep could.
    with scratch_folder() as live:
        stale = tempfile.mkdtemp(prefix="autotune-trial-")
        Path(stale, ".owner").write_text("12345\n")  # its parent died: nobody holds the lock
        leftover = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)"], env={**os.environ, "TMPDIR": stale}
        )
        try:
            time.sleep(0.2)  # the process's environment is readable once it runs
            removed = sweep_stale_scratch()
            assert stale in removed and live not in removed
            assert not Path(stale).exists()
            assert Path(live).is_dir()
            give_up = time.monotonic() + 1.0
            while _running(leftover.pid) and time.monotonic() < give_up:
                time.sleep(0.1)
            assert not _running(leftover.pid)  # killed (and reaped by the sweep, which waited for it)
        finally:
            leftover.kill()
    assert not Path(live).exists()


def test_sweep_stale_scratch_keeps_the_folders_of_running_trials(temp_root):
    with scratch_folder() as live:
        stale = stale_folder(temp_root)
        removed = sweep_stale_scratch()
        assert str(stale) in removed and live not in removed
        assert Path(live, ".owner").is_file()
        assert sweep_stale_scratch() == []  # once swept, nothing more


def test_sweep_stale_scratch_removes_a_folder_without_owner_only_once_it_is_old(temp_root):
    # A folder without an owner file is being made right now (or by an older autotune): left a while.
    young = stale_folder(temp_root, owner=False)
    old = stale_folder(temp_root, owner=False, age_seconds=HOUR)
    removed = sweep_stale_scratch()
    assert str(old) in removed and not old.exists()
    assert str(young) not in removed and young.is_dir()


def test_sweep_stale_scratch_leaves_what_is_not_a_scratch_folder(temp_root):
    other = temp_root / "pytest-of-someone"
    other.mkdir()
    (other / ".owner").write_text("12345\n")
    a_file = temp_root / f"{PREFIX}not-a-folder"
    a_file.write_text("")
    old = time.time() - HOUR
    os.utime(a_file, (old, old))
    assert sweep_stale_scratch() == []
    assert other.is_dir() and a_file.is_file()
