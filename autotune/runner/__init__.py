"""Trials in fresh processes: the harness inside, the runner outside."""

from autotune.runner._oom import is_oom_error
from autotune.runner._outcome import MeasureSettings, Status, TrialJob, TrialOutcome, WindowResult
from autotune.runner._runner import run_trial

__all__ = ["MeasureSettings", "Status", "TrialJob", "TrialOutcome", "WindowResult", "is_oom_error", "run_trial"]
