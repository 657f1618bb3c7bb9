"""``autotune report``: a study's top trials, the baseline, status counts and which knobs mattered."""

from __future__ import annotations

import dataclasses
import statistics
import warnings
from pathlib import Path
from typing import Any

from autotune.store import _records
from autotune.store._records import TrialRecord
from autotune.store._storage import load_study
from autotune.study import _recipe_check as recipe_check
from autotune.study._budget import Budgets
from autotune.study._figures import study_figures, write_files
from autotune.study._notes import memory_limit_found
from autotune.training import _noise_scale as noise_scale
from autotune.training._run_record import actuals


@dataclasses.dataclass(frozen=True)
class Report:
    """What ``autotune report`` shows of a study: its trials by status, the best ones, the range tests,
    the re-measurement, the full runs recorded against it, and the setup's notes."""

    study: str
    status_counts: dict[str, int]
    rows: list[dict[str, Any]]  # the top trials by throughput, then the baseline if it is not among them
    importances: dict[str, float]  # knob -> share of the objective's variance it explains (fANOVA)
    importance_note: str | None  # why importances are missing, when they are
    memory: str
    lr_find: list[dict[str, Any]]
    plots: list[str]
    full_runs: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # autotune train's records, by trial
    unit: str = "samples"  # the workload's unit: the rows' unit_per_second and speedup are in it
    objective: str = "samples/s"  # the study's objective, whose variance the importances split
    overhead: dict[str, Any] | None = None  # trial cost outside the timed windows, over the trials measured
    paired: dict[str, Any] | None = None  # the search's side-by-side re-measurement (study user attribute)
    noise_scale: dict[str, Any] | None = None  # the gradient noise scale pooled over the trials, with a line
    recipe_checks: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # changed recipes checked

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_report(
    study_name: str | None = None, storage: str | None = None, top: int = 10, plots: str | Path | None = None
) -> Report:
    """The report of study ``study_name`` in ``storage`` (the default storage's only study when None): its
    ``top`` trials, and with ``plots`` a folder for the figures as PNG files."""
    study = load_study(study_name, storage)
    trials = study.get_trials(deepcopy=False)
    budgets = Budgets.from_json(_records.read_setup(study).budgets)
    baseline = _records.baseline_trial(trials)
    baseline_rate = _records.rate(baseline) if baseline is not None and _records.status(baseline) == "ok" else None
    measured = sorted((t for t in trials if _records.status(t) == "ok"), key=_records.rate, reverse=True)
    chosen = measured[:top]
    if baseline is not None and baseline not in chosen:
        chosen.append(baseline)
    importances, note = _importances(study)
    written = [str(path) for path in write_files(study_figures(trials, budgets), plots)] if plots else []
    return Report(
        study=study.study_name,
        status_counts=_records.status_counts(trials),
        rows=[_row(trial, baseline_rate) for trial in chosen],
        importances=importances,
        importance_note=note,
        memory=f"feasible below {budgets.describe_memory_limit()}. {memory_limit_found(trials)}",
        lr_find=list(study.user_attrs.get("lr_find", {}).values()),
        plots=written,
        full_runs=[actual for _, actual in sorted(actuals(study).items())],
        unit=_records.unit(next((t for t in trials if TrialRecord.of(t).unit), {})),
        objective=study.metric_names[0] if study.metric_names else "samples/s",
        overhead=trial_overhead(trials),
        paired=study.user_attrs.get("paired"),
        noise_scale=_noise_scale(trials),
        recipe_checks=[check.to_json() for check in recipe_check.stored_checks(study)],
    )


def _noise_scale(trials: list[Any]) -> dict[str, Any] | None:
    """The study's gradient noise scale, over every trial that measured one."""
    pooled = noise_scale.pooled(trials)
    if pooled is None:
        return None
    measured = sum(1 for t in trials if (TrialRecord.of(t).noise or {}).get("gradient_sq"))
    return {
        **pooled.to_json(),
        "trials": measured,
        "line": f"{pooled.describe()}, from {measured} trial{'s' if measured != 1 else ''}",
    }


def trial_overhead(trials: list[Any]) -> dict[str, Any] | None:
    """The median share of a trial's wall time spent outside its timed windows and evaluation
    (compile aside), its median seconds and its median startup, over the trials that measured."""
    measured = [t.user_attrs for t in trials if TrialRecord.of(t).overhead_fraction is not None]
    if not measured:
        return None
    startups = [a["startup_seconds"] for a in measured if a.get("startup_seconds") is not None]
    return {
        "trials": len(measured),
        "median_fraction": statistics.median(a["overhead_fraction"] for a in measured),
        "median_seconds": statistics.median(a["overhead_seconds"] for a in measured),
        "median_startup_seconds": statistics.median(startups) if startups else None,
        "median_wall_seconds": statistics.median(a.get("wall_seconds") or 0.0 for a in measured),
    }


def _row(trial: Any, baseline_rate: float | None) -> dict[str, Any]:
    attrs = TrialRecord.of(trial)
    rate = _records.rate(trial) if attrs.samples_per_second is not None else None  # the workload's unit/s
    return {
        "trial": trial.number,
        "baseline": bool(attrs.baseline),
        "status": _records.status(trial),
        "feasible": _records.is_feasible(trial),
        "samples_per_second": attrs.samples_per_second,
        "unit_per_second": rate,
        "unit": _records.unit(trial),
        "speedup": rate / baseline_rate if rate and baseline_rate else None,
        "throughput_cv": attrs.throughput_cv,
        "overhead_fraction": attrs.overhead_fraction,
        "peak_memory_bytes": attrs.peak_memory_bytes,
        "projected_full_run_seconds": attrs.projected_full_run_seconds,
        "noise_scale": attrs.noise_scale,
        "reason": attrs.reason or "",
        "config": attrs.config,
    }


def _importances(study: Any) -> tuple[dict[str, float], str | None]:
    """Optuna's default evaluator (fANOVA) over the finished trials' params."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 3:
        return {}, f"parameter importances need at least 3 finished trials, the study has {len(complete)}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            importances = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:
        return {}, f"parameter importances could not be computed: {exc}"
    if not importances:
        return {}, "no knob varied across the finished trials"
    return {name: float(value) for name, value in importances.items()}, None
