"""Re-measuring the top candidates in fresh processes, interleaved over rounds, before choosing."""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from autotune.runner import MeasureSettings, TrialJob, run_trial
from autotune.store._records import StudySetup, as_setup
from autotune.study._budget import Budgets
from autotune.study._selection import Candidate


@dataclasses.dataclass(frozen=True)
class Verification:
    """Candidates re-measured side by side: their figures over interleaved rounds of fresh processes."""

    candidates: list[Candidate]  # re-measured figures; candidates with no successful round are left out
    rounds: list[dict[str, Any]]  # per candidate: trial number, each round's samples/s (None when it failed)
    seconds: float  # wall time spent re-measuring


def verify(
    candidates: Sequence[Candidate],
    setup: StudySetup | Mapping[str, Any],
    rounds: int = 3,
    on_run: Callable[[int, int, Candidate, float | None], None] | None = None,
    deadline: float | None = None,
    max_rounds: int | None = None,
    enough: Callable[[list[Candidate]], bool] | None = None,
) -> Verification:
    """Run every candidate once per round, in the same order each round, so drift hits all alike.

    A candidate's figure is the median over rounds; its spread is the larger of the rounds'
    coefficient of variation and its windows' typical one. After ``rounds``, further rounds run
    up to ``max_rounds`` until ``enough(figures so far)`` holds, while the deadline leaves time
    for one more round.
    """
    setup = as_setup(setup)
    started = time.monotonic()
    rates: dict[int, list[float | None]] = {c.number: [] for c in candidates}
    window_spreads: dict[int, list[float]] = {c.number: [] for c in candidates}
    most = max(rounds, max_rounds or rounds)
    round_index = 0
    while round_index < most:
        if round_index >= rounds:
            per_round = (time.monotonic() - started) / round_index
            if (
                enough is None
                or enough(_figures(candidates, rates, window_spreads))
                or deadline is not None
                and deadline - time.monotonic() < per_round
            ):
                break
        for candidate in candidates:
            outcome = run_trial(
                round_job(setup, candidate.record.config),
                deadline=deadline,  # time.monotonic(): a run still going then ends as a timeout
            )
            rate = outcome.samples_per_second if outcome.status.value == "ok" else None
            rates[candidate.number].append(rate)
            if outcome.throughput_cv is not None and rate is not None:
                window_spreads[candidate.number].append(outcome.throughput_cv)
            if on_run is not None:
                on_run(round_index, rounds, candidate, rate)
        round_index += 1
    table = [{"trial": number, "samples_per_second": values} for number, values in rates.items()]
    return Verification(
        candidates=_figures(candidates, rates, window_spreads), rounds=table, seconds=time.monotonic() - started
    )


def trial_job(setup: StudySetup | Mapping[str, Any], config: dict[str, Any]) -> TrialJob:
    """A trial of ``config`` measured as the study's trials were: its recorded workload, device,
    measure settings, memory budget and trial timeout."""
    setup = as_setup(setup)
    return TrialJob(
        workload=setup.workload,
        config=config,
        device=setup.torch_device,
        measure=MeasureSettings(**setup.measure),
        memory_budget_bytes=Budgets.from_json(setup.budgets).memory_budget_bytes,
        timeout_seconds=setup.trial_timeout_seconds,
        step_closure=setup.step_closure,
    )


def round_job(setup: StudySetup | Mapping[str, Any], config: dict[str, Any]) -> TrialJob:
    """One round's run of ``config``: the study's trial with its windows fixed at the study's count.
    Windows narrow a run's figure within its process; what a re-measurement has to narrow is the
    spread between processes, and rounds do that: windows past the count would lengthen every run
    (to twice its windows, by default, wherever they spread more than 2%) for little."""
    setup = as_setup(setup)
    job = trial_job(setup, config)
    return dataclasses.replace(job, measure=dataclasses.replace(job.measure, max_windows=None))


def _figures(
    candidates: Sequence[Candidate], rates: dict[int, list[float | None]], window_spreads: dict[int, list[float]]
) -> list[Candidate]:
    measured = []
    for candidate in candidates:
        good = [rate for rate in rates[candidate.number] if rate is not None]
        if not good:
            continue
        rounds_cv = statistics.pstdev(good) / statistics.fmean(good) if len(good) > 1 else 0.0
        windows_cv = statistics.fmean(window_spreads[candidate.number]) if window_spreads[candidate.number] else 0.0
        measured.append(
            dataclasses.replace(
                candidate,
                samples_per_second=statistics.median(good),
                spread=max(rounds_cv, windows_cv),
                window_spread=windows_cv,
            )
        )
    return measured
