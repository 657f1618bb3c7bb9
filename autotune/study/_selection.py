"""Choosing the config to export: a preference, then the baseline guarantee against measured noise."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from autotune.exceptions import NoFeasibleTrialError
from autotune.knobs._units import format_duration, format_size
from autotune.store._records import TrialRecord, runs_baseline_config
from autotune.study._budget import Budgets

Preference = Literal["fastest", "balanced", "memory", "recipe"]
PREFERENCES: tuple[str, ...] = ("fastest", "balanced", "memory", "recipe")
MEMORY_PREFERENCE_TOLERANCE = 0.05  # "memory" picks the leanest config within 5% of the fastest
NOISE_SIGMAS = 2.0  # a win must exceed twice the combined relative spread of the two figures


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A measured config: its throughput (median) and relative spread, from a trial or a re-measurement."""

    number: int  # the Optuna trial number
    attrs: dict[str, Any]  # the trial's user attributes
    samples_per_second: float
    spread: float  # coefficient of variation of the measurement
    peak_memory_bytes: int | None
    is_baseline: bool = False
    # Re-measured over rounds: the windows' typical spread inside one run, the part of ``spread``
    # that more rounds do not lower. None for a trial's own figure.
    window_spread: float | None = None

    @functools.cached_property
    def record(self) -> TrialRecord:
        """The trial's record (its figures as the search stored them), read from ``attrs`` once."""
        return TrialRecord.from_attrs(self.attrs)

    @property
    def rate(self) -> float:
        """Throughput in the workload's unit (tokens/s, images/s), at this candidate's samples/s."""
        samples, units = self.record.samples_per_second, self.record.unit_per_second
        return self.samples_per_second * (units / samples) if samples and units else self.samples_per_second

    @property
    def unit(self) -> str:
        return self.record.unit or "samples"

    def projected(self, budgets: Budgets) -> float | None:
        """The full run's projected seconds at this candidate's (possibly re-measured) throughput."""
        return budgets.project(self.record, self.samples_per_second)

    @classmethod
    def from_trial(cls, trial: Any) -> Candidate:
        record = TrialRecord.of(trial)
        return cls(
            number=trial.number,
            attrs=dict(trial.user_attrs),
            samples_per_second=float(record.samples_per_second or 0.0),
            spread=float(record.throughput_cv or 0.0),
            peak_memory_bytes=record.peak_memory_bytes,
            is_baseline=record.baseline,
        )


@dataclasses.dataclass(frozen=True)
class Selection:
    """The config chosen for the user's run, the baseline it was compared with, and why."""

    chosen: Candidate
    baseline: Candidate | None
    fits_deadline: bool
    explanation: list[str]  # one line per decision, shown to the user and stored in the export


def noise_margin(a: Candidate, b: Candidate) -> float:
    """Relative difference two measurements can show by noise alone."""
    return NOISE_SIGMAS * math.hypot(a.spread, b.spread)


def select(
    feasible: Sequence[Candidate],
    baseline: Candidate | None,
    budgets: Budgets,
    prefer: Preference = "fastest",
    deadline_misses: Sequence[Candidate] = (),
    study_name: str = "",
    recipe: Mapping[str, Any] | None = None,
    objective: str = "throughput",
) -> Selection:
    """Pick by preference among feasible candidates; the baseline wins unless beaten beyond noise.

    ``baseline`` is the baseline's candidate when it is feasible, else None. When nothing is
    feasible only because of the deadline, the closest miss is returned with ``fits_deadline=False``.
    ``recipe``: the baseline's values of the workload knobs that change what is learned; ``recipe``
    preference keeps them, every preference says when the chosen config changes them.
    """
    if not feasible:
        return _closest_miss(deadline_misses, budgets, study_name)
    recipe = dict(recipe or {})
    twins = [
        c
        for c in feasible
        if baseline is not None and not c.is_baseline and runs_baseline_config(c.attrs, baseline.attrs)
    ]
    feasible = [c for c in feasible if c not in twins]
    timed = _timed(feasible, budgets, objective)
    chosen, line = _preferred(feasible, budgets, prefer, timed, recipe)
    explanation = [line]
    if twins:
        numbers = ", ".join(f"#{c.number}" for c in twins)
        explanation.insert(
            0,
            f"trial{'s' if len(twins) > 1 else ''} {numbers} ran the baseline's own config (a "
            "sampler may propose it again): a measurement of the baseline, not a candidate",
        )
    if timed:
        explanation += _time_against_throughput(chosen, feasible, budgets)
    chosen, lines = _against_baseline(chosen, baseline, budgets, timed)
    explanation += lines
    for name, (was, now) in recipe_changes(chosen, recipe).items():
        explanation.append(
            f"{name} {now} (the baseline's {was}) changes the recipe: what the run learns differs, "
            "not only its speed (--prefer recipe keeps it)"
        )
    return Selection(chosen=chosen, baseline=baseline, fits_deadline=True, explanation=explanation)


def _preferred(
    feasible: Sequence[Candidate], budgets: Budgets, prefer: Preference, timed: bool, recipe: dict[str, Any]
) -> tuple[Candidate, str]:
    """The candidate the preference picks and the line saying why; ``recipe``: the fastest of those that
    keep the recipe's workload knobs (the fastest of all when none does)."""
    if prefer != "recipe":
        return _by_preference(feasible, budgets, prefer, timed)
    keeping = [c for c in feasible if not recipe_changes(c, recipe)]
    chosen, line = _by_preference(keeping or feasible, budgets, "fastest", timed)
    line = (
        "recipe: " + line.removeprefix("fastest: ") + ", keeping " + ", ".join(sorted(recipe))
        if keeping and recipe
        else f"recipe: no workload knob changes the recipe; {line}"
    )
    return chosen, line


def _against_baseline(
    chosen: Candidate, baseline: Candidate | None, budgets: Budgets, timed: bool
) -> tuple[Candidate, list[str]]:
    """The baseline guarantee: ``chosen`` only where it beats the baseline beyond the measured noise, else
    the baseline; with the line saying which."""
    if baseline is None:
        return chosen, ["the baseline has no feasible measurement to compare with"]
    if chosen.is_baseline:
        return chosen, []
    gain = _gain(chosen, baseline, budgets, timed)
    margin = noise_margin(chosen, baseline)
    if gain <= margin:
        return baseline, [
            f"no faster config found: trial #{chosen.number} is {gain:+.1%} against the baseline, within "
            f"the measured noise (±{margin:.1%}); exporting the baseline (trial #{baseline.number})"
        ]
    return chosen, [
        f"trial #{chosen.number} beats the baseline by {gain:.1%}, beyond the measured noise (±{margin:.1%})"
    ]


def hold_off(
    feasible: list[Candidate], incumbent: int, baseline: int, budgets: Budgets, objective: str
) -> tuple[list[Candidate], list[str]]:
    """Trial ``incumbent``, re-measured beside the baseline, stays the one to beat: a trial measured once
    replaces it only beyond the noise of the two (the best of many single figures reads high by chance,
    and a re-measured figure no longer does). ``feasible`` without the trials it holds off, and a line
    saying so."""
    winner = next((c for c in feasible if c.number == incumbent), None)
    if winner is None:
        return feasible, []
    timed = _timed(feasible, budgets, objective)
    gains = {c.number: _gain(c, winner, budgets, timed) for c in feasible if c.number not in (incumbent, baseline)}
    held = [c for c in feasible if 0.0 < gains.get(c.number, 0.0) <= noise_margin(c, winner)]
    if not held:
        return feasible, []
    earlier = [c.window_spread is not None for c in held]  # re-measured in an earlier round, not once
    how = (
        "in an earlier round of re-measurement"
        if all(earlier)
        else "once or in an earlier round of re-measurement"
        if any(earlier)
        else "once"
    )
    line = (
        f"{', '.join(f'trial #{c.number} ({gains[c.number]:+.1%})' for c in held)} measured faster than trial "
        f"#{incumbent} {how}, within the noise of the two; #{incumbent}, re-measured beside the "
        "baseline at the end of the search, is kept"
    )
    held_numbers = {c.number for c in held}
    return [c for c in feasible if c.number not in held_numbers], [line]


def with_paired(feasible: list[Candidate], paired: Mapping[str, Any]) -> list[Candidate]:
    """``feasible`` with the figures of the search's side-by-side re-measurement (study user attribute
    ``paired``): every trial re-measured there (the winner, the baseline, and any challenger), its
    latest figure. A figure from an earlier round of re-measurement is taken as its speedup over
    that round's baseline, times the latest baseline figure: the machine's drift between rounds
    cancels, as it does within one."""
    latest = paired.get("baseline_samples_per_second")
    figures = {row["trial"]: _at_latest_baseline(row, latest) for row in paired.get("figures") or ()}
    if not figures:  # recorded before challengers were re-measured: the winner and the baseline
        figures = {
            paired["trial"]: {"samples_per_second": paired["samples_per_second"], "spread": paired["spread"]},
            paired["baseline_trial"]: {
                "samples_per_second": paired["baseline_samples_per_second"],
                "spread": paired["baseline_spread"],
            },
        }
    return [
        dataclasses.replace(
            c,
            samples_per_second=figures[c.number]["samples_per_second"],
            spread=figures[c.number]["spread"],
            window_spread=figures[c.number].get("window_spread"),
        )
        if c.number in figures
        else c
        for c in feasible
    ]


def _at_latest_baseline(row: Mapping[str, Any], latest: float | None) -> Mapping[str, Any]:
    measured_beside = row.get("baseline_samples_per_second")
    if not latest or not measured_beside or measured_beside == latest:
        return row
    return {**row, "samples_per_second": row["samples_per_second"] * latest / measured_beside}


def paired_pool(
    feasible: list[Candidate],
    paired: Mapping[str, Any],
    budgets: Budgets,
    objective: str,
    prefer: Preference = "fastest",
) -> tuple[list[Candidate], list[str]]:
    """The candidates export-best chooses among after a search's side-by-side re-measurement: the
    re-measured figures in place of single ones, and for "fastest" the single figures within the
    noise of the re-measured winner held off (``hold_off``); with the line saying so."""
    feasible = with_paired(feasible, paired)
    if prefer != "fastest":
        return feasible, []
    return hold_off(feasible, paired["trial"], paired["baseline_trial"], budgets, objective)


def paired_lines(paired: Mapping[str, Any]) -> list[str]:
    """What a search's side-by-side re-measurement (study user attribute ``paired``) found, as
    search, export-best and report say it: its rounds, the speedup and its noise; the challengers."""
    rounds = len(paired["rounds"][0]["samples_per_second"])
    lines = [
        f"measured side by side at the end of the search ({rounds} interleaved rounds in fresh processes): "
        f"trial #{paired['trial']} {paired['speedup']:.2f}x the baseline (#{paired['baseline_trial']}), "
        f"±{paired['noise']:.1%} noise"
    ]
    figures = {row["trial"]: row for row in paired.get("figures") or ()}

    def listed(numbers: Sequence[int]) -> str:
        return ", ".join(f"trial #{n} ({figures[n]['samples_per_second']:.1f} samples/s)" for n in numbers)

    if paired.get("challengers"):
        lines.append(
            "measured faster than the search's first pick once, beyond the noise, and so re-measured "
            "beside it and the baseline: " + listed(paired["challengers"])
        )
    if paired.get("runners_up"):
        lines.append(
            "re-measured next, as the trials before them were no faster than the baseline side by side: "
            + listed(paired["runners_up"])
        )
    return lines


def fastest_against(
    challengers: Sequence[Candidate], reference: Candidate, budgets: Budgets, objective: str
) -> Candidate:
    """The challenger with the largest gain over ``reference``, by the study's objective."""
    timed = _timed([*challengers, reference], budgets, objective)
    return max(challengers, key=lambda c: _gain(c, reference, budgets, timed))


def gain_over(challenger: Candidate, reference: Candidate, budgets: Budgets, objective: str) -> float:
    """How much faster ``challenger`` is than ``reference`` by the study's objective (0.1: 10%)."""
    return _gain(challenger, reference, budgets, _timed([challenger, reference], budgets, objective))


def _timed(feasible: Sequence[Candidate], budgets: Budgets, objective: str) -> bool:
    """Ranked by the full run's projected time: the study's objective, and every candidate has a projection."""
    return objective == "time" and all(c.projected(budgets) is not None for c in feasible)


def _gain(challenger: Candidate, reference: Candidate, budgets: Budgets, timed: bool) -> float:
    """How much faster ``challenger`` is than ``reference``: by projected time, else by throughput."""
    reference_seconds, challenger_seconds = reference.projected(budgets), challenger.projected(budgets)
    if timed and reference_seconds is not None and challenger_seconds:
        return reference_seconds / challenger_seconds - 1.0
    return challenger.rate / reference.rate - 1.0


def recipe_changes(candidate: Candidate, recipe: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The recipe knobs whose value in ``candidate`` differs from the baseline's: {name: (was, now)}."""
    knobs = candidate.record.config.get("workload_knobs") or {}
    return {name: (was, knobs.get(name)) for name, was in recipe.items() if knobs.get(name) != was}


def _by_preference(
    feasible: Sequence[Candidate], budgets: Budgets, prefer: Preference, timed: bool = False
) -> tuple[Candidate, str]:
    """``timed``: "fastest" is the shortest projected full run, else the highest throughput."""
    if timed:
        fastest = min(feasible, key=lambda c: _seconds(c, budgets))
        best_line = (
            f"trial #{fastest.number}, the shortest projected full run "
            f"({format_duration(fastest.projected(budgets))} at {fastest.rate:.1f} {fastest.unit}/s)"
        )
        speed = lambda c: 1.0 / c.projected(budgets)  # noqa: E731 - higher is better, as for throughput
    else:
        fastest = max(feasible, key=lambda c: c.rate)
        best_line = f"trial #{fastest.number}, the highest throughput ({fastest.rate:.1f} {fastest.unit}/s)"
        speed = lambda c: c.rate  # noqa: E731
    if prefer == "fastest":
        # The baseline itself measured fastest: its config is what goes on, and the line says so.
        return fastest, f"fastest: {best_line}" + (
            "; it is the baseline: no config measured faster" if fastest.is_baseline else ""
        )
    if prefer == "memory":
        floor = (1 - MEMORY_PREFERENCE_TOLERANCE) * speed(fastest)
        pool = [c for c in feasible if speed(c) >= floor and c.peak_memory_bytes is not None]
        leanest = min(pool, key=lambda c: c.peak_memory_bytes or 0, default=fastest)
        return leanest, (
            f"memory: trial #{leanest.number} uses the least memory ({format_size(leanest.peak_memory_bytes)}) "
            f"among configs within {MEMORY_PREFERENCE_TOLERANCE:.0%} of the fastest"
        )
    if prefer == "balanced":
        if budgets.memory_budget_bytes is None:
            return fastest, f"balanced: no memory budget is set, so trial #{fastest.number}, the fastest"
        roomy = budgets.memory_budget_bytes * (1 - 2 * budgets.memory_headroom)
        pool = [c for c in feasible if c.peak_memory_bytes is not None and c.peak_memory_bytes <= roomy]
        if not pool:
            return fastest, (
                f"balanced: no config leaves twice the headroom (peak <= {format_size(roomy)}); "
                f"trial #{fastest.number}, the fastest"
            )
        best = max(pool, key=speed)
        return best, (
            f"balanced: trial #{best.number}, the fastest whose peak ({format_size(best.peak_memory_bytes)}) "
            f"leaves twice the headroom (<= {format_size(roomy)})"
        )
    raise ValueError(f"unknown preference {prefer!r}")


def _time_against_throughput(chosen: Candidate, feasible: Sequence[Candidate], budgets: Budgets) -> list[str]:
    """When the highest steady throughput is not the shortest run, say why: its warm-up (compile)."""
    quickest = max(feasible, key=lambda c: c.rate)
    if quickest is chosen or quickest.rate <= chosen.rate:
        return []
    parts = budgets.projection(quickest.attrs, quickest.samples_per_second) or {}
    chosen_parts = budgets.projection(chosen.attrs, chosen.samples_per_second) or {}
    overhead = parts.get("warmup_seconds", 0.0) + parts.get("evaluation_seconds", 0.0)
    compile_seconds = parts.get("compile_seconds", 0.0)
    factor = parts.get("progress_factor", 1.0)
    if factor > chosen_parts.get("progress_factor", 1.0):
        # Faster per sample, slower to the same model: its effective batch buys less progress per sample.
        noise = f"gradient noise scale {budgets.noise_scale:.3g}" if budgets.noise_scale else "no noise scale measured"
        cost = (
            f"effective batch {parts.get('effective_batch')} needing {factor:.3g}x the recipe's samples to reach "
            f"its progress ({noise})"
        )
    else:
        cost = (
            f"compile {format_duration(compile_seconds)}" if compile_seconds else f"warm-up {format_duration(overhead)}"
        )
    return [
        f"trial #{quickest.number} has the highest steady throughput ({quickest.rate:.1f} {quickest.unit}/s, "
        f"{quickest.rate / chosen.rate - 1:+.0%}), but with its {cost} the full run projects "
        f"{format_duration(quickest.projected(budgets))} against {format_duration(chosen.projected(budgets))}"
    ]


def _seconds(candidate: Candidate, budgets: Budgets) -> float:
    """The projected full run, for ranking: a candidate without one ranks last (timed pools have one each)."""
    seconds = candidate.projected(budgets)
    return float("inf") if seconds is None else seconds


def _closest_miss(misses: Sequence[Candidate], budgets: Budgets, study_name: str) -> Selection:
    projected = [(seconds, c) for c in misses if (seconds := c.record.projected_full_run_seconds) is not None]
    if not projected or budgets.time_limit_seconds is None:
        raise NoFeasibleTrialError(f"study {study_name!r} has no feasible trial to export")
    seconds, closest = min(projected, key=lambda pair: pair[0])
    over = seconds - budgets.time_limit_seconds
    line = (
        f"no config fits {budgets.describe_time_limit()}: the closest, trial #{closest.number}, "
        f"projects {format_duration(seconds)}, {format_duration(over)} over; exporting it"
    )
    return Selection(chosen=closest, baseline=None, fits_deadline=False, explanation=[line])
