"""A workload's bugs, refused in one line: before the study, and when its first trials all fail alike.

A loss that is not a scalar tensor, or a dataset smaller than the batch, makes every trial fail
with the same message: the workload is checked first, by one step at the baseline's config in a
trial process; and a search whose first trials all fail with one same error stops there.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from autotune.exceptions import WorkloadError
from autotune.runner import MeasureSettings, Status, TrialJob, TrialOutcome, run_trial

if TYPE_CHECKING:
    from autotune.study._loop import SearchOptions, SearchPlan

SAME_ERROR_TRIALS = 3  # the search stops when its first trials, this many, all fail with one same error
# The shortest run_trial measures: one warm-up step, then one timed window of one step.
_ONE_STEP: dict[str, Any] = dict(
    warmup_steps=0, windows=1, window_seconds=0.01, max_window_steps=1, divergence_factor=None
)


@dataclasses.dataclass(frozen=True)
class WorkloadCheck:
    """What the workload's first steps found."""

    dataset_size: int | None  # samples in the dataset, as the trial saw it
    step_closure: bool | None = None  # True: its optimizer's step needs a closure the workload did not declare
    note: str | None = None


def check_workload(
    options: SearchOptions,
    plan: SearchPlan,
    *,
    on_wait: Callable[[str], None] | None = None,
    deadline: float | None = None,
) -> WorkloadCheck:
    """Build the workload and train its first steps at the baseline's config, in a trial process.

    A step that raises (or crashes the process) is a WorkloadError: every trial would fail the same
    way. Running out of memory, a hang or a NaN at the baseline are results the search records.
    An optimizer whose step fails without a closure (SAM, as users write it, asserts that it got one)
    and runs with one is stepped with one from then on, and the check says so."""
    outcome = _first_steps(options, plan, plan.step_closure, on_wait, deadline)
    if outcome.status is not Status.ERROR:
        return WorkloadCheck(outcome.dataset_size)
    reason = re.sub(r"^\w*(?:Workload|Config)Error: ", "", outcome.reason)  # already in the user's terms
    hint = ""
    if outcome.in_optimizer_step and not plan.step_closure:
        with_closure = _first_steps(options, plan, True, on_wait, deadline)
        if with_closure.status is not Status.ERROR:
            return WorkloadCheck(
                with_closure.dataset_size,
                step_closure=True,
                note=(
                    f"the optimizer's step failed without a closure ({reason}) and ran with one: every trial and the "
                    "full run step it with a closure that re-evaluates the loss (as Workload(step_closure=True) does)"
                ),
            )
        hint = "; it failed inside optimizer.step(), and with a closure too (Workload.step_closure)"
    raise WorkloadError(
        f"workload {options.workload!r}: {reason} "
        f"(its first training step, at the baseline's batch_size {plan.baseline.batch_size}){hint}"
    )


def _first_steps(
    options: SearchOptions,
    plan: SearchPlan,
    step_closure: bool | None,
    on_wait: Callable[[str], None] | None,
    deadline: float | None,
) -> TrialOutcome:
    return run_trial(
        TrialJob(
            workload=options.workload,
            config=plan.baseline.to_dict(),
            device=plan.device.torch_device,
            measure=MeasureSettings(**_ONE_STEP, seed=options.measure.seed),
            memory_budget_bytes=plan.budgets.memory_budget_bytes,
            timeout_seconds=plan.trial_timeout_seconds,
            step_closure=step_closure,
        ),
        deadline=deadline,
        on_wait=on_wait,
    )


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
