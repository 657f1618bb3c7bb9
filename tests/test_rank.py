"""One rank of a data-parallel trial: its own failure reported as the trial's, with its rank, and the
group ended at once rather than by the trial's timeout."""

from __future__ import annotations

import sys
import time

import pytest
from test_ddp import _group_job

from autotune.runner import Status, run_trial

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the rank guard is Linux's")


def test_group_trial_one_rank_out_of_memory_makes_it_oom_and_ends_every_rank():
    started = time.monotonic()
    outcome = run_trial(_group_job("oom_on_rank_1"))
    assert outcome.status is Status.OOM
    assert outcome.reason.startswith("rank 1: OutOfMemoryError: CUDA out of memory.")
    assert time.monotonic() - started < 100  # ended at the failure, not by the trial's timeout
