"""A workload's bugs, refused in one line: before the study, and when its first trials all fail alike.

A loss that is not a scalar tensor, or a dataset smaller than the batch, makes every trial fail
with the same message: the workload is checked first, by one step at the baseline's config in a
trial process; and a search whose first trials all fail with one same error stops there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from autotune.exceptions import WorkloadError
from autotune.runner import MeasureSettings, Status, TrialJob, run_trial

if TYPE_CHECKING:
    from autotune.study import SearchOptions, SearchPlan

SAME_ERROR_TRIALS = 3  # the search stops when its first trials, this many, all fail with one same error
# The shortest run_trial measures: one warm-up step, then one timed window of one step.
_ONE_STEP = dict(warmup_steps=0, windows=1, window_seconds=0.01, max_window_steps=1, divergence_factor=None)


def check_workload(
    options: SearchOptions,
    plan: SearchPlan,
    *,
    on_wait: Callable[[str], None] | None = None,
    deadline: float | None = None,
) -> int | None:
    """Build the workload and train its first steps at the baseline's config, in a trial process;
    the dataset's size in samples, as the trial saw it.

    A step that raises (or crashes the process) is a WorkloadError: every trial would fail the same
    way. Running out of memory, a hang or a NaN at the baseline are results the search records."""
    outcome = run_trial(
        TrialJob(
            workload=options.workload,
            config=plan.baseline.to_dict(),
            device=plan.device.torch_device,
            measure=MeasureSettings(**_ONE_STEP, seed=options.measure.seed),
            memory_budget_bytes=plan.budgets.memory_budget_bytes,
            timeout_seconds=plan.trial_timeout_seconds,
        ),
        deadline=deadline,
        on_wait=on_wait,
    )
    if outcome.status is Status.ERROR:
        reason = re.sub(r"^\w*(?:Workload|Config)Error: ", "", outcome.reason)  # already in the user's terms
        raise WorkloadError(
            f"workload {options.workload!r}: {reason} "
            f"(its first training step, at the baseline's batch_size {plan.baseline.batch_size})"
        )
    return outcome.dataset_size


class RepeatedErrors:
    """Watches the first trials of a search: all failed, with one same error, means a workload bug."""

    def __init__(self) -> None:
        self.first: list[tuple[int, str, str]] = []  # (trial number, status, reason)

    def add(self, number: int, status: str, reason: str) -> bool:
        """Record a finished trial; True when the search must stop."""
        if len(self.first) < SAME_ERROR_TRIALS:
            self.first.append((number, status, reason))
        return self.error() is not None

    def error(self) -> WorkloadError | None:
        if len(self.first) < SAME_ERROR_TRIALS:
            return None
        reasons = {reason for _, status, reason in self.first if status == "error"}
        errors = [number for number, status, _ in self.first if status == "error"]
        if len(errors) < SAME_ERROR_TRIALS or len(reasons) != 1:
            return None
        numbers = ", ".join(f"#{number}" for number in errors)
        return WorkloadError(
            f"the search stopped: its first {len(errors)} trials ({numbers}) all failed with the same error: "
            f"{reasons.pop()}"
        )
