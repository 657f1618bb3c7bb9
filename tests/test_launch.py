"""The launcher of a data-parallel trial: a rank that dies without a word (SIGKILL) is the trial's
failure, and every descendant is killed, in whatever session it runs."""

from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest
from test_ddp import _group_job

from autotune.runner import Status, run_trial
from autotune.runner._launch import kill_descendants

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the rank guard is Linux's")


def test_group_trial_rank_killed_without_a_word_fails_it():
    outcome = run_trial(_group_job("killed_rank_1"))
    assert outcome.status is Status.OOM
    assert outcome.reason == "rank 1 was killed by SIGKILL (the host's out-of-memory killer)"


def test_kill_descendants_reaches_a_child_in_a_session_of_its_own():
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True); "
        "time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code])
    give_up = time.monotonic() + 30
    while not psutil.Process(parent.pid).children(recursive=True):
        assert time.monotonic() < give_up
        time.sleep(0.05)
    child = psutil.Process(parent.pid).children(recursive=True)[0]
    assert child.pid != parent.pid and psutil.Process(child.pid).ppid() == parent.pid
    kill_descendants(parent.pid)
    give_up = time.monotonic() + 10
    while _alive(child):  # killed: a zombie until its parent (which sleeps on) reaps it
        assert time.monotonic() < give_up, child
        time.sleep(0.05)
    parent.kill()
    parent.wait()


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
