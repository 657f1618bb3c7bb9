"""Studies that explain themselves in optuna-dashboard: a study note, trial notes, stored figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from autotune.knobs._units import format_duration, format_size, format_value
from autotune.store import _records
from autotune.store._records import StudySetup, TrialRecord, as_setup
from autotune.study import _recipe_check as recipe_check
from autotune.study._budget import Budgets
from autotune.study._figures import study_figures, to_plotly
from autotune.study._selection import Candidate, select
from autotune.training import _noise_scale as noise_scale


def explain_study(study: Any, *, figures: bool = True, trials: Sequence[Any] | None = None) -> str:
    """Write the study note (and, with ``figures``, the plotly figures) the dashboard shows; returns the note.
    ``trials``: the study's trials where the caller has just read them."""
    import optuna_dashboard

    trials = study.get_trials(deepcopy=False) if trials is None else trials
    setup = _records.read_setup(study)
    budgets = Budgets.from_json(setup.budgets)
    note = study_note(
        study.study_name,
        trials,
        budgets.with_noise_scale(trials),
        study.user_attrs.get("lr_find", {}),
        setup=setup,
        checks=recipe_check.stored_checks(study),
        held=study.user_attrs.get(HELD_ATTR),
    )
    for check in recipe_check.stored_checks(study):
        note += f"\n**Recipe check** ({'kept' if check.kept else 'not kept'}): {check.reason}\n"
    optuna_dashboard.save_note(study, note)
    if figures:
        for figure in study_figures(trials, budgets):
            optuna_dashboard.save_plotly_graph_object(study, to_plotly(figure), graph_object_id=figure.id)
    return note


def explain_trial(trial: Any, status: str, reason: str) -> None:
    """A trial that did not finish well says why in its own note."""
    import optuna_dashboard

    optuna_dashboard.save_note(trial, f"**{status}**: {reason}")


def study_note(
    name: str,
    trials: Sequence[Any],
    budgets: Budgets,
    lr_results: dict[str, Any],
    *,
    setup: StudySetup | Mapping[str, Any] | None = None,
    checks: Sequence[Any] = (),
    held: Mapping[str, str] | None = None,
) -> str:
    lines = [f"## autotune: {name}", ""]
    feasible = [Candidate.from_trial(t) for t in _records.feasible_trials(trials)]
    if setup is not None:  # a changed effective batch is a winner only once a recipe check kept it
        feasible, _unchecked = recipe_check.exportable(feasible, setup, list(checks))
    baseline_trial = _records.baseline_trial(trials)
    baseline = next((c for c in feasible if c.is_baseline), None)
    if feasible:
        objective = as_setup(setup).objective if setup is not None else "throughput"
        selection = select(feasible, baseline, budgets, objective=objective)  # ranked as export-best ranks
        chosen = selection.chosen
        unit = _records.unit(chosen.attrs)
        rate, per_second = _records.rate(chosen.attrs), f"{unit}/s"
        speedup = (
            f", **{rate / _records.rate(baseline.attrs):.2f}x** the baseline "
            f"(trial #{baseline.number}, {_records.rate(baseline.attrs):.1f} {per_second})"
            if baseline is not None
            else ", the baseline has no feasible measurement"
        )
        lines.append(f"**Winner:** trial #{chosen.number}, {rate:.1f} {per_second}{speedup}")
        lines.append("")
        lines += [f"- {line}" for line in selection.explanation]
        projected = chosen.record.projected_full_run_seconds
        if projected is not None:
            lines.append(f"- full run ({budgets.epochs:g} epochs) projected at {format_duration(projected)}")
        if setup is not None:
            recorded = as_setup(setup)
            kept = kept_at_baseline(
                trials, chosen.record.config or {}, recorded.baseline, recorded.searched_knobs, held or {}, unit
            )
            lines += [f"- {line}" for line in kept.values()]
    else:
        state = "no trial yet" if not trials else "no feasible trial yet"
        lines.append(
            f"**Winner:** {state}" + (f" (baseline is trial #{baseline_trial.number})" if baseline_trial else "")
        )
    lines += ["", "| status | trials |", "|---|---|"]
    lines += [f"| {status} | {count} |" for status, count in _records.status_counts(trials).items()]
    lines += ["", f"**Memory:** feasible below {budgets.describe_memory_limit()}. {memory_limit_found(trials)}"]
    noise = noise_scale.pooled(trials)
    if noise is not None:
        lines.append(f"\n**Gradient noise scale:** {noise.describe()}")
    for data in lr_results.values():
        lines.append(
            f"\n**LR range test** (trial #{data['trial']}): suggested max_lr {data['suggestion']:.3g}, "
            f"minimum loss at {data['lr_at_min_loss']:.3g}"
            + (f"; check: {data['check']['reason']}" if data.get("check") else "")
        )
    return "\n".join(lines) + "\n"


def memory_limit_found(trials: Sequence[Any]) -> str:
    """Where the memory limit lies: the largest batch that fitted, the smallest that did not."""
    records = [(t.number, TrialRecord.of(t)) for t in trials]
    ran = [(n, r) for n, r in records if r.config and r.peak_memory_bytes is not None]
    fitted = [(n, r) for n, r in ran if r.status in ("ok", "slow", "diverged")]
    out = [(n, r) for n, r in ran if r.status == "oom" and not r.skipped]
    parts = []
    if fitted:
        number, largest = max(fitted, key=lambda pair: pair[1].config["batch_size"])
        parts.append(
            f"Largest batch that fitted: {largest.config['batch_size']} "
            f"(trial #{number}, peak {format_size(largest.peak_memory_bytes)})."
        )
    if out:
        number, smallest = min(out, key=lambda pair: pair[1].config["batch_size"])
        parts.append(f"Smallest that ran out: {smallest.config['batch_size']} (trial #{number}).")
    return " ".join(parts) if parts else "No trial has run out of memory."


HELD_ATTR = "held_knobs"  # the study's user attribute: the knobs the guided search held, with why


def kept_at_baseline(
    trials: Sequence[Any],
    chosen: Mapping[str, Any],
    baseline: Mapping[str, Any],
    searched: Sequence[str],
    held: Mapping[str, str],
    unit: str = "samples",
) -> dict[str, str]:
    """Each searched knob the chosen config leaves at the baseline's value, with why: held by the search,
    the trials with other values not chosen (slower, or not exportable; the fastest of them named), or
    none measured."""
    kept: dict[str, str] = {}
    ran = [(t, record) for t in trials if (record := TrialRecord.of(t)).config and not record.skipped]
    for name in searched:
        if name not in chosen or chosen.get(name) != baseline.get(name):
            continue
        value = chosen[name]
        if name in held:
            kept[name] = held[name]
            continue
        others = [(t, r) for t, r in ran if r.config.get(name) != value]
        if not others:
            kept[name] = f"{name} left at {format_value(value)}: no other value was measured"
            continue
        tried = sorted({format_value(r.config.get(name)) for _, r in others})
        fastest = max(others, key=lambda pair: _records.rate(pair[0]))
        kept[name] = (
            f"{name} left at {format_value(value)}: {len(others)} trial(s) with {', '.join(tried)} were not chosen "
            f"(the fastest of them, trial #{fastest[0].number}, {_records.rate(fastest[0]):.1f} {unit}/s)"
        )
    return kept
