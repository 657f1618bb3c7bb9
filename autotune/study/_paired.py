"""The side-by-side re-measurement at the end of a search: the best trial and the baseline measured in
interleaved rounds of fresh processes, until the speedup's noise settles."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from autotune.store import _records
from autotune.store._records import StudySetup
from autotune.study._budget import Budgets

if TYPE_CHECKING:
    from autotune.study._verify import Verification
from autotune.study._options import SearchOptions

PAIRED_ROUNDS = 2  # at least; more, up to PAIRED_MAX_ROUNDS, while the speedup's noise is above PAIRED_NOISE


PAIRED_MAX_ROUNDS = 6  # and while more rounds could still lower it enough to change the verdict


PAIRED_NOISE = 0.10


PAIRED_CHALLENGERS = 2  # trials measured once re-measured in turn, where export-best would take them


def paired_settled(figures: list[Any], budgets: Budgets | None = None, objective: str = "throughput") -> bool:
    """Whether the side-by-side rounds so far (the challengers' and the winner's figures, then the
    baseline's) are enough: judged on the fastest of them against the baseline, by the study's
    objective, as the re-measurement then names its winner.

    Enough once the speedup's noise is within PAIRED_NOISE. Where the windows' own spread keeps
    the noise above it whatever the rounds (a workload whose steps vary: boxes per image, sequence
    lengths), more rounds are run only while they could still change the verdict: the gain is
    beyond that floor yet still within the noise."""
    from autotune.study._selection import NOISE_SIGMAS, fastest_against, noise_margin

    if len(figures) < 2:
        return False
    *others, baseline = figures
    winner = fastest_against(others, baseline, budgets or Budgets(), objective)
    noise = noise_margin(winner, baseline)
    if noise <= PAIRED_NOISE:
        return True
    floor = NOISE_SIGMAS * math.hypot(winner.window_spread or 0.0, baseline.window_spread or 0.0)
    if floor <= PAIRED_NOISE:
        return False
    gain = abs(winner.rate / baseline.rate - 1)
    return gain <= floor or gain > noise


def remeasure_best(
    study: Any, best: Any, baseline: Any, options: SearchOptions, deadline: float | None
) -> tuple[dict[str, Any] | None, list[str]]:
    """The winner and the baseline re-measured in fresh processes, interleaved over rounds, so the
    speedup rests on figures taken side by side (a baseline measured once, first, can be off by the
    machine's drift). Stored with the study (user attribute ``paired``); export-best uses it.

    A trial measured once that export-best would still take over the re-measured winner (faster
    beyond the noise of the two) is re-measured in turn beside the winner and the baseline, up to
    PAIRED_CHALLENGERS times, so the search and the export name the same trial and the exported
    figure is never a lone one that read high by chance."""
    if best is None or baseline is None or best.number == baseline.number or _records.status(baseline) != "ok":
        return None, []
    from autotune.study import _recipe_check as recipe_check
    from autotune.study._selection import Candidate

    setup = _records.read_setup(study)
    trials = study.get_trials(deepcopy=False)
    budgets = Budgets.from_json(setup.budgets).with_noise_scale(trials)
    feasible, _dropped = recipe_check.exportable(
        [Candidate.from_trial(t) for t in _records.feasible_trials(trials)],
        setup,
        recipe_check.stored_checks(study),
        keep_trials=(best.number,),
    )
    paired, notes = _rounds(feasible, best, baseline, setup, deadline, budgets)
    if paired is not None:
        study.set_user_attr("paired", paired)
    return paired, notes


def _rounds(
    feasible: list[Any], best: Any, baseline: Any, setup: StudySetup, deadline: float | None, budgets: Budgets
) -> tuple[dict[str, Any] | None, list[str]]:
    """The re-measurements in turn: the winner and the baseline, then each challenger export-best would
    still take, up to PAIRED_CHALLENGERS; the last paired record and a note per turn."""
    from autotune.study._selection import Candidate

    objective = setup.objective
    singles = {c.number: c for c in feasible}  # each trial's own figure, measured once
    reference = Candidate.from_trial(baseline)
    measuring = [singles.get(best.number) or Candidate.from_trial(best), reference]
    paired: dict[str, Any] | None = None
    notes: list[str] = []
    runners: list[int] = []  # re-measured because the trials before them did not beat the baseline
    for attempt in range(1 + PAIRED_CHALLENGERS):
        measured, note = _side_by_side(measuring, setup, deadline, budgets, objective, paired)
        if measured is None:
            notes.append(note if paired is None else f"trial #{measuring[0].number} {note}")
            break
        paired = {**measured, "runners_up": runners} if runners else measured
        pool, chosen, winner = _export_pick(feasible, paired, budgets, objective)
        if chosen.is_baseline:
            # Side by side, nothing beat the baseline. A trial measured once can have read low in a
            # slow process: the next that measured faster than the baseline once gets its turn.
            turn = _runner_up(feasible, paired, winner, reference, budgets, objective)
            if turn is None:
                break
            runner, line = turn
            beside, runners = "the baseline", [*runners, runner.number]
            following = [runner, reference]
        else:
            # Settled once the export's pick was among the trials just measured side by side; a figure from
            # an earlier round of re-measurement is re-measured again, as the machine may have drifted.
            if chosen.number not in singles or any(c.number == chosen.number for c in measuring):
                break
            line, beside = _challenger_line(chosen, winner, pool), "the two"
            following = [singles[chosen.number], singles.get(winner.number) or measuring[-2], reference]
        if attempt == PAIRED_CHALLENGERS:
            notes.append(
                f"{line}; not re-measured, as {PAIRED_CHALLENGERS} challengers were already "
                "(export-best --verify 3 re-measures the top 3)"
            )
            break
        notes.append(f"{line}: re-measured beside {beside}")
        measuring = following
    return paired, notes


def _export_pick(
    feasible: list[Any], paired: dict[str, Any], budgets: Budgets, objective: str
) -> tuple[list[Any], Any, Any]:
    """The candidates with the side-by-side figures, export-best's pick among them, and the side-by-side winner."""
    from autotune.study._selection import paired_pool, select

    pool, _held = paired_pool(feasible, paired, budgets, objective)
    chosen = select(pool, next((c for c in pool if c.is_baseline), None), budgets, objective=objective).chosen
    winner = next(c for c in pool if c.number == paired["trial"])
    return pool, chosen, winner


def _runner_up(
    feasible: list[Any], paired: dict[str, Any], winner: Any, reference: Any, budgets: Budgets, objective: str
) -> tuple[Any, str] | None:
    """The fastest trial not yet re-measured that beat the baseline once, and the line saying it is next;
    None when no such trial is left."""
    from autotune.study._selection import fastest_against, gain_over

    remeasured = {row["trial"] for row in paired["figures"]}
    rest = [
        c
        for c in feasible
        if c.number not in remeasured
        and not c.is_baseline
        and not _records.runs_baseline_config(c.attrs, reference.attrs)
    ]
    runner = fastest_against(rest, reference, budgets, objective) if rest else None
    if runner is None or gain_over(runner, reference, budgets, objective) <= 0:
        return None
    line = (
        f"trial #{winner.number} was no faster than the baseline side by side; trial #{runner.number}, "
        f"{runner.rate:.1f} {runner.unit}/s once against the baseline's {reference.rate:.1f}, is next"
    )
    return runner, line


def _challenger_line(chosen: Any, winner: Any, pool: list[Any]) -> str:
    """The line saying why export-best's pick ``chosen`` is re-measured beside the side-by-side winner."""
    if chosen.window_spread is None:
        return (
            f"trial #{chosen.number} measured {chosen.rate:.1f} {chosen.unit}/s once, beyond the noise "
            f"of trial #{winner.number}'s {winner.rate:.1f} side by side"
        )
    # compared as speedups over the baseline of each one's round
    base = next(c for c in pool if c.is_baseline)
    return (
        f"trial #{chosen.number} measured {chosen.rate / base.rate:.2f}x the baseline in an earlier "
        f"re-measurement, beyond the noise of trial #{winner.number}'s {winner.rate / base.rate:.2f}x "
        "side by side"
    )


def _side_by_side(
    measuring: list[Any],
    setup: StudySetup,
    deadline: float | None,
    budgets: Budgets,
    objective: str,
    previous: dict[str, Any] | None,
) -> tuple[dict[str, Any] | None, str]:
    """``measuring`` (challengers and the winner, then the baseline) re-measured over interleaved rounds;
    the paired record with the fastest of them as the winner, the figures of ``previous`` kept for
    trials not measured again. None and a note when the time budget or a run stops it."""
    from autotune.study._selection import fastest_against
    from autotune.study._verify import verify

    runs = len(measuring) * PAIRED_ROUNDS
    per_run = max((c.record.wall_seconds or 0.0) for c in measuring)
    if deadline is not None and deadline - time.monotonic() < runs * per_run + 5:
        return None, (
            "the winner and the baseline were not re-measured side by side: the time budget is spent "
            "(export-best --verify 1 does it)"
        ) if previous is None else ("was not re-measured: the time budget is spent")
    verification = verify(
        measuring,
        setup,
        rounds=PAIRED_ROUNDS,
        deadline=deadline,
        max_rounds=PAIRED_MAX_ROUNDS,
        enough=lambda figures: paired_settled(figures, budgets, objective),
    )
    measured = {c.number: c for c in verification.candidates}
    if any(c.number not in measured for c in measuring):
        return None, (
            "the side-by-side re-measurement of the winner and the baseline did not finish"
            if previous is None
            else "was not re-measured: a run did not finish"
        )
    *others, reference = (measured[c.number] for c in measuring)
    winner = fastest_against(others, reference, budgets, objective)
    return _paired_record(winner, reference, others, measured, verification, previous), ""


def _paired_record(
    winner: Any,
    reference: Any,
    others: list[Any],
    measured: dict[int, Any],
    verification: Verification,
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    """The paired record of one re-measurement: ``winner`` against the baseline ``reference``, every
    trial's latest figure (``previous``'s kept for trials not measured again), its challengers and time."""
    from autotune.study._selection import noise_margin

    figures = {row["trial"]: row for row in (previous or {}).get("figures") or ()}
    for c in measured.values():
        figures[c.number] = {
            "trial": c.number,
            "samples_per_second": c.samples_per_second,
            "spread": c.spread,
            "window_spread": c.window_spread,  # the part of each spread rounds do not lower
            "baseline_samples_per_second": reference.samples_per_second,
        }  # of the same round
    return {
        "trial": winner.number,
        "baseline_trial": reference.number,
        "rounds": verification.rounds,
        "samples_per_second": winner.samples_per_second,
        "spread": winner.spread,
        "baseline_samples_per_second": reference.samples_per_second,
        "baseline_spread": reference.spread,
        "window_spread": winner.window_spread,
        "baseline_window_spread": reference.window_spread,
        "speedup": winner.rate / reference.rate,
        "noise": noise_margin(winner, reference),
        "unit": winner.unit,
        "figures": sorted(figures.values(), key=lambda row: row["trial"]),
        "challengers": list(
            dict.fromkeys([*(previous or {}).get("challengers", []), *(c.number for c in others[:-1])])
        ),
        "seconds": verification.seconds + (previous or {}).get("seconds", 0.0),
    }
