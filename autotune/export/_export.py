"""export-best: the chosen config as a file, with its measured figures, the full-run projection,
the payoff against the baseline, and provenance."""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from autotune.exceptions import NoFeasibleTrialError, UsageError
from autotune.export._accelerate import accelerate_export
from autotune.export._hf import hf_export
from autotune.export._lightning import lightning_export
from autotune.export._torch_script import torch_script
from autotune.knobs._config import TrainConfig
from autotune.knobs._units import format_duration
from autotune.store import _records
from autotune.store._records import ExportDocument, StudySetup, TrialRecord, as_setup
from autotune.store._storage import DEFAULT_STORAGE, load_study, redact
from autotune.study import _recipe_check as recipe_check
from autotune.study._budget import Budgets
from autotune.study._lr_find import LRFindResult, scaled_lr, scaling_rule, stored_result
from autotune.study._notes import HELD_ATTR, kept_at_baseline
from autotune.study._selection import Candidate, Preference, Selection, paired_lines, paired_pool, select
from autotune.study._verify import Verification, verify
from autotune.training import _noise_scale as noise_scale

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

ExportFormat = Literal["yaml", "json", "hf", "lightning", "accelerate", "torch"]

# Where each format goes without --out. hf, lightning and accelerate are YAML, or JSON in a .json file;
# torch is a Python script.
DEFAULT_OUT = {
    "yaml": "best.yaml",
    "json": "best.json",
    "hf": "best_hf.yaml",
    "lightning": "best_lightning.yaml",
    "accelerate": "best_accelerate.yaml",
    "torch": "best_train.py",
}

MEASURED_FIELDS = (
    "samples_per_second",
    "unit_per_second",
    "unit",
    "throughput_cv",
    "peak_memory_bytes",
    "data_wait_fraction",
    "warmup_seconds",
    "compile_seconds",
    "loss_start",
    "loss_end",
)


@dataclasses.dataclass(frozen=True)
class Export:
    """The exported document, and where it was written."""

    document: dict[str, Any]
    path: Path | None

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.document["config"])

    @property
    def explanation(self) -> list[str]:
        return self.document["selection"]["explanation"]


def export_best(
    study_name: str | None = None,
    storage: str | None = None,
    out: str | Path | None = None,
    fmt: ExportFormat | None = None,
    prefer: Preference = "fastest",
    verify_top: int = 0,
    rounds: int = 3,
    on_verify_run: Callable[[int, int, Candidate, float | None], None] | None = None,
    device_kind: str | None = None,
) -> Export:
    """Choose among the study's feasible trials (optionally re-measuring the top ``verify_top``)
    and write the choice as YAML or JSON, or in a training framework's form (``fmt``: hf, lightning,
    accelerate, torch). Trials of one device kind are ranked: ``device_kind``, else the study's own."""
    path = Path(out) if out is not None else None
    fmt = export_format(path, fmt)
    if verify_top < 0 or rounds < 1:
        raise UsageError(f"--verify must be >= 0 and --rounds >= 1, got {verify_top} and {rounds}")
    study = load_study(study_name, storage)
    setup = _records.read_setup(study)
    trials, kind, kind_lines = _records.of_one_kind(
        study.get_trials(deepcopy=False), setup.identity.get("device_kind"), device_kind
    )
    budgets = Budgets.from_json(setup.budgets).with_noise_scale(trials)
    checks = recipe_check.stored_checks(study)
    baseline_trial = _records.baseline_trial(trials)
    selection, verification = _choose(study, setup, trials, budgets, checks, prefer, verify_top, rounds, on_verify_run)
    chosen = selection.chosen
    kept = _kept(study, setup, trials, chosen)
    selection.explanation.extend([*kind_lines, *kept.values()])
    config, lr_section, lr_line = _learning_rate(study, chosen, budgets, setup)
    progress = _progress(chosen, config, budgets, setup, trials, checks)
    if progress is not None:
        selection.explanation.append(progress["line"])
    selection.explanation.append(lr_line)
    search_seconds = _search_seconds(study, trials, verification)
    document = ExportDocument(
        config=config.to_dict(),
        measured=_measured(chosen),
        one_cycle=_one_cycle(config, chosen, budgets),
        lr_find=lr_section,
        progress=progress,
        full_run=_full_run(selection, budgets),
        payoff=_payoff(selection, budgets, baseline_trial, search_seconds),
        selection={
            "prefer": prefer,
            "explanation": selection.explanation,
            "verified": None if verification is None else verification.rounds,
            "kept_at_baseline": kept,
        },
        provenance={**_provenance(study, storage, setup, selection, baseline_trial), "device_kind": kind},
    ).to_dict()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(document, fmt, as_json=path.suffix == ".json", name=path.name))
    return Export(document=document, path=path)


def _kept(study: Any, setup: StudySetup, trials: list[FrozenTrial], chosen: Candidate) -> dict[str, str]:
    """The searched knobs the export keeps at the baseline's values, and why."""
    return kept_at_baseline(
        trials,
        chosen.record.config or {},
        setup.baseline,
        setup.searched_knobs,
        study.user_attrs.get(HELD_ATTR) or {},
        _records.unit(chosen.attrs),
    )


def _choose(
    study: Any,
    setup: StudySetup,
    trials: list[FrozenTrial],
    budgets: Budgets,
    checks: list[recipe_check.RecipeCheck],
    prefer: Preference,
    verify_top: int,
    rounds: int,
    on_verify_run: Callable[[int, int, Candidate, float | None], None] | None,
) -> tuple[Selection, Verification | None]:
    """The selection among the exportable trials (re-measured, or a paired comparison's pool), with its
    explanation so far, and the verification when one ran."""
    candidates = [Candidate.from_trial(t) for t in _records.feasible_trials(trials)]
    feasible, unchecked = recipe_check.exportable(candidates, setup, checks)
    misses = _deadline_misses(trials)
    if not feasible and not misses:
        counts = _records.status_counts(trials)
        raise NoFeasibleTrialError(
            f"study {study.study_name!r} has no feasible trial to export "
            f"({', '.join(f'{n} {s}' for s, n in counts.items()) or 'no trials'})"
        )
    verification = None
    if verify_top and feasible:
        verification = _verify_top(study, feasible, setup, budgets, verify_top, rounds, on_verify_run)
        feasible = verification.candidates
    paired = study.user_attrs.get("paired")
    held_off: list[str] = []
    if verification is None and paired:
        feasible, held_off = paired_pool(feasible, paired, budgets, setup.objective, prefer)
    baseline = next((c for c in feasible if c.is_baseline), None)
    selection = select(
        feasible,
        baseline,
        budgets,
        prefer=prefer,
        deadline_misses=[Candidate.from_trial(t) for t in misses],
        study_name=study.study_name,
        recipe=_recipe(setup),
        objective=setup.objective,
    )
    selection.explanation[1:1] = held_off
    selection.explanation.extend(_unchecked_lines(selection, unchecked, candidates, baseline, budgets, prefer, setup))
    if verification is None and paired:
        first, *challengers = paired_lines(paired)
        selection.explanation.extend(([first] if selection.chosen.number == paired["trial"] else []) + challengers)
    return selection, verification


def _verify_top(
    study: Any,
    feasible: list[Candidate],
    setup: StudySetup,
    budgets: Budgets,
    verify_top: int,
    rounds: int,
    on_verify_run: Callable[[int, int, Candidate, float | None], None] | None,
) -> Verification:
    """Re-measure the top ``verify_top`` candidates (and the baseline) and note the rounds on the study."""
    if setup.objective == "time":
        top = sorted(feasible, key=lambda c: c.projected(budgets) or float("inf"))[:verify_top]
    else:
        top = sorted(feasible, key=lambda c: c.rate, reverse=True)[:verify_top]
    top += [c for c in feasible if c.is_baseline and c not in top]
    verification = verify(top, setup, rounds=rounds, on_run=on_verify_run)
    study.set_user_attr("verification", {"rounds": verification.rounds, "seconds": verification.seconds})
    return verification


def _search_seconds(study: Any, trials: list[FrozenTrial], verification: Verification | None) -> float:
    """The search's wall time: its trials', or every search's where recorded, and the re-measurement's."""
    trial_seconds = sum(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_complete is not None and t.datetime_start is not None
    )
    # Every search's whole wall time (range test and re-measurement included), where recorded.
    return max(trial_seconds, float(study.user_attrs.get("search_seconds") or 0.0)) + (
        verification.seconds if verification else 0.0
    )


def _provenance(
    study: Any, storage: str | None, setup: StudySetup, selection: Selection, baseline_trial: FrozenTrial | None
) -> dict[str, Any]:
    """Where the export came from: the study, trial, workload, device, versions, time and baseline."""
    import importlib.metadata

    import optuna

    chosen = selection.chosen
    return {
        "study": study.study_name,
        "storage": redact(storage or DEFAULT_STORAGE),
        "trial": chosen.number,
        "workload": setup.workload,
        "device": chosen.record.device,
        "torch_version": chosen.record.torch_version,
        "optuna_version": optuna.__version__,
        "autotune_version": importlib.metadata.version("autotune"),
        "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "baseline_trial": baseline_trial.number if baseline_trial is not None else None,
        "baseline_samples_per_second": _baseline_rate(selection, baseline_trial),
        "speedup_over_baseline": _speedup(selection, baseline_trial),
        # The optimizer's step takes a closure the workload did not declare (found by the search).
        "step_closure": setup.step_closure,
    }


def _unchecked_lines(
    selection: Selection,
    unchecked: list[str],
    candidates: list[Candidate],
    baseline: Candidate | None,
    budgets: Budgets,
    prefer: Preference,
    setup: StudySetup | Mapping[str, Any],
) -> list[str]:
    """The lines on trials at a changed effective batch left out for want of a kept recipe check, where
    one of them would have been chosen otherwise."""
    setup = as_setup(setup)
    if not unchecked or not candidates:
        return []
    objective = setup.objective
    unchecked_pick = select(candidates, baseline, budgets, prefer=prefer, objective=objective)
    return unchecked if unchecked_pick.chosen.number != selection.chosen.number else []


def export_format(path: Path | None, fmt: str | None) -> ExportFormat:
    """``fmt``, else from the file's suffix (.json: json, .py: torch, else yaml); checked before any work."""
    if fmt is None:
        suffix = path.suffix if path is not None else ""
        fmt = {".json": "json", ".py": "torch"}.get(suffix, "yaml")
    if fmt not in DEFAULT_OUT:
        raise UsageError(f"--format must be one of {', '.join(DEFAULT_OUT)}, got {fmt!r}")
    if fmt == "torch" and path is not None and path.suffix != ".py":
        raise UsageError(f"--format torch writes a Python script: --out must end in .py, got {str(path)!r}")
    return fmt  # type: ignore[return-value]


def default_out(fmt: str | None) -> str:
    """The file export-best writes when --out is not given: best.yaml, or best_hf.yaml, best_train.py..."""
    return DEFAULT_OUT.get(fmt or "yaml", "best.yaml")


def render(document: dict[str, Any], fmt: ExportFormat, *, as_json: bool = False, name: str = "best_train.py") -> str:
    """The file's text: the document as YAML or JSON, or a framework's form of it (YAML, JSON with
    ``as_json``; torch: the Python script ``name``)."""
    if fmt in ("hf", "lightning", "accelerate"):
        form = {"hf": hf_export, "lightning": lightning_export, "accelerate": accelerate_export}[fmt](document)
        if as_json:
            return json.dumps(form, indent=2) + "\n"
        import yaml

        return yaml.safe_dump(form, sort_keys=False, width=1000)  # a code line stays one line
    if fmt == "torch":
        return torch_script(document, name)
    if fmt == "json":
        return json.dumps(document, indent=2) + "\n"
    if fmt == "yaml":
        import yaml

        return yaml.safe_dump(document, sort_keys=False)
    raise UsageError(f"--format must be one of {', '.join(DEFAULT_OUT)}, got {fmt!r}")


def _deadline_misses(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """Finished, fitting in memory, and infeasible only because of the deadline."""
    return [
        t
        for t in trials
        if t.state.name == "COMPLETE"
        and TrialRecord.of(t).status == "ok"
        and t.constraints.get("deadline", 0) > 0
        and all(value <= 0 for key, value in t.constraints.items() if key != "deadline")
    ]


def _learning_rate(
    study: Any, chosen: Candidate, budgets: Budgets, setup: StudySetup | Mapping[str, Any]
) -> tuple[TrainConfig, dict | None, str]:
    """The chosen config with the max_lr to export: one a recipe check kept; else the recipe's base_lr,
    scaled by the study's rule where the effective batch changed; a searched max_lr as the trial ran it
    unless the LR range test finds it too close to the edge. The range test's own figures go along."""
    setup = as_setup(setup)
    config = TrainConfig.from_dict(chosen.record.config)
    result = stored_result(study, chosen.record.config)
    section = _lr_find_section(result)
    checks = recipe_check.stored_checks(study, chosen.number)
    kept = [check for check in checks if check.kept]
    if kept:
        max_lr = float(kept[-1].config["max_lr"])
        if section is not None:
            section["exported_max_lr"] = max_lr
        return (
            dataclasses.replace(config, max_lr=max_lr),
            section,
            (f"max_lr {max_lr:.3g}, checked against the recipe: {kept[-1].reason}"),
        )
    if "max_lr" in _records.searched_knobs(setup):
        return _searched_lr(study, chosen, config, result, section)
    return _recipe_lr(chosen, config, budgets, setup, result, section, checks)


def _lr_find_section(result: LRFindResult | None) -> dict[str, Any] | None:
    """The LR range test's figures for the export (None where no range test covers the config)."""
    return (
        None
        if result is None
        else {
            "trial": result.trial,
            "suggestion": result.suggestion,
            "lr_at_min_loss": result.lr_at_min_loss,
            "lr_steepest": result.lr_steepest,
            "rule": "min(lr_at_min_loss / 4, lr_steepest), at least lr_at_min_loss / 10",
            "check": _check_section(result.check),
            "exported_max_lr": result.max_lr,
        }
    )


def _searched_lr(
    study: Any, chosen: Candidate, config: TrainConfig, result: LRFindResult | None, section: dict[str, Any] | None
) -> tuple[TrainConfig, dict | None, str]:
    """A searched max_lr: as the trial ran it, unless the LR range test finds it too close to the edge."""
    if result is None:
        return (
            config,
            None,
            (
                f"max_lr {config.max_lr:g} as searched: no LR range test covers this effective "
                f"batch and precision (run 'autotune lr-find --study {study.study_name} --trial "
                f"{chosen.number}')"
            ),
        )
    if config.max_lr <= result.lr_at_min_loss / 2:
        return (
            config,
            section,
            (
                f"max_lr {config.max_lr:g} as searched: the LR range test finds it clear of the "
                f"edge (minimum loss at {result.lr_at_min_loss:.3g})"
            ),
        )
    return (
        dataclasses.replace(config, max_lr=result.max_lr),
        section,
        (
            f"max_lr {result.max_lr:.3g} from the LR range test (minimum loss at {result.lr_at_min_loss:.3g}); the "
            f"trial's searched {config.max_lr:g} is too close to the edge"
        ),
    )


def _recipe_lr(
    chosen: Candidate,
    config: TrainConfig,
    budgets: Budgets,
    setup: StudySetup,
    result: LRFindResult | None,
    section: dict[str, Any] | None,
    checks: list[recipe_check.RecipeCheck],
) -> tuple[TrainConfig, dict | None, str]:
    """The recipe's base_lr, scaled by the study's rule where the effective batch changed."""
    recipe = _recipe_config(setup, config)
    recipe_lr = recipe.max_lr
    recipe_batch = budgets.baseline_effective_batch or recipe.effective_batch_size
    scaling = setup.lr_scaling
    rule = scaling_rule(scaling, chosen.record.adaptive_optimizer)
    max_lr = scaled_lr(
        recipe_lr,
        config.effective_batch_size,
        recipe_batch,
        scaling,
        budgets.noise_scale,
        chosen.record.adaptive_optimizer,
    )
    why = f"the recipe check did not keep it: {checks[-1].reason}" if checks else "no recipe check ran on it"
    if config.effective_batch_size == recipe_batch:
        line = f"max_lr {recipe_lr:g}, the recipe's"
        if result is not None and not math.isclose(result.max_lr, recipe_lr, rel_tol=1e-9):
            line += f": the LR range test's {result.max_lr:.3g} is not exported, as {why}"
    else:
        line = (
            f"max_lr {max_lr:.3g}, the recipe's {recipe_lr:g} scaled by {rule} to effective batch "
            f"{config.effective_batch_size} (the recipe's {recipe_batch}); {why}"
        )
    if section is not None:
        section["exported_max_lr"] = max_lr
    return dataclasses.replace(config, max_lr=max_lr), section, line


def _recipe_config(setup: StudySetup | Mapping[str, Any], trial_config: TrainConfig) -> TrainConfig:
    """The recipe's config as the study recorded it (its baseline); a trial's own where none was recorded."""
    setup = as_setup(setup)
    return TrainConfig.from_dict(setup.baseline) if setup.baseline else trial_config


def _progress(
    chosen: Candidate,
    config: TrainConfig,
    budgets: Budgets,
    setup: StudySetup | Mapping[str, Any],
    trials: list[Any],
    checks: list[recipe_check.RecipeCheck],
) -> dict[str, Any] | None:
    """What the chosen config changes of the recipe's progress: the effective batch and optimizer steps,
    before and after, the gradient noise scale, the projection to the recipe's progress against the one
    at the recipe's samples, the max_lr and its rule, and the recipe check."""
    setup = as_setup(setup)
    recipe_batch = budgets.baseline_effective_batch
    if recipe_batch is None:
        return None
    projection = budgets.projection(chosen.attrs, chosen.samples_per_second) or {}
    same_samples = (
        dataclasses.replace(budgets, baseline_effective_batch=None).projection(chosen.attrs, chosen.samples_per_second)
        or {}
    )
    noise = noise_scale.pooled(trials)
    factor = projection.get("progress_factor", 1.0)
    recipe_samples = (projection["samples"] / factor) if projection.get("samples") else None
    batch = config.effective_batch_size
    recipe_lr = _recipe_config(setup, TrainConfig.from_dict(chosen.record.config)).max_lr
    changes = recipe_check.changes_recipe(config.to_dict(), {"max_lr": recipe_lr}, recipe_batch)
    section: dict[str, Any] = {
        "recipe_effective_batch": recipe_batch,
        "effective_batch": batch,
        "noise_scale": None if noise is None else noise.value,
        "noise_scale_stderr": None if noise is None else noise.stderr,
        "noise_scale_groups": 0 if noise is None else noise.groups,
        "samples_factor": factor,
        "recipe_samples": recipe_samples,
        "samples": projection.get("samples"),
        "recipe_steps": None if recipe_samples is None else int(recipe_samples // recipe_batch),
        "steps": None if projection.get("samples") is None else int(projection["samples"] // batch),
        "epochs": budgets.epochs * factor if budgets.steps is None else None,
        "projected_seconds": projection.get("seconds"),
        "same_samples_projected_seconds": same_samples.get("seconds"),
        "recipe_max_lr": recipe_lr,
        "max_lr": config.max_lr,
        "lr_rule": scaling_rule(setup.lr_scaling, chosen.record.adaptive_optimizer),
        "changes": changes,
        "recipe_check": _recipe_check_summary(checks, chosen, config),
    }
    section["line"] = _progress_line(section, noise)
    return section


def _recipe_check_summary(
    checks: list[recipe_check.RecipeCheck], chosen: Candidate, config: TrainConfig
) -> dict[str, Any] | None:
    """The latest recipe check of the chosen trial at the exported max_lr, less its two configs."""
    check = next(
        (c for c in reversed(checks) if c.trial == chosen.number and c.config["max_lr"] == config.max_lr), None
    )
    return (
        None
        if check is None
        else {key: value for key, value in check.to_json().items() if key not in ("config", "recipe_config")}
    )


def _progress_line(section: dict[str, Any], noise: noise_scale.NoiseScale | None) -> str:
    """The explanation's line on the progress: the effective batch kept, or changed and what that costs."""
    batch, recipe_batch = section["effective_batch"], section["recipe_effective_batch"]
    factor = section["samples_factor"]
    noise_text = "no gradient noise scale measured" if noise is None else f"gradient noise scale {noise.describe()}"
    if batch == recipe_batch:
        return (
            f"the recipe's effective batch {batch} is kept: {section['recipe_steps']} optimizer steps, "
            f"as the recipe makes ({noise_text})"
        )
    return (
        f"effective batch {batch} instead of the recipe's {recipe_batch}: {factor:.3g}x the samples to the "
        f"recipe's progress ({noise_text}), {section['steps']} optimizer steps instead of "
        f"{section['recipe_steps']}; the full run to that progress projects "
        f"{format_duration(section['projected_seconds'])} "
        f"({format_duration(section['same_samples_projected_seconds'])} for the recipe's samples alone)"
    )


def _check_section(check: dict[str, Any] | None) -> dict[str, Any] | None:
    """The suggestion's check run, for the export: its verdict, the two rates and their losses."""
    if check is None:
        return None
    return {
        key: check[key]
        for key in (
            "steps",
            "kept",
            "reason",
            "suggested_lr",
            "scaled_base_lr",
            "suggested_loss",
            "scaled_base_loss",
            "suggested_losses",
            "scaled_base_losses",
        )
    }


def _recipe(setup: StudySetup | Mapping[str, Any]) -> dict[str, Any]:
    """The baseline's values of the workload knobs the space marks as changing the recipe."""
    setup = as_setup(setup)
    space = setup.space or {}
    knobs = (setup.baseline or {}).get("workload_knobs") or {}
    return {
        name: knobs.get(name)
        for name, domain in space.items()
        if isinstance(domain, dict) and domain.get("changes_recipe")
    }


def _one_cycle(config: TrainConfig, chosen: Candidate, budgets: Budgets) -> dict[str, Any]:
    """Arguments for torch.optim.lr_scheduler.OneCycleLR over the full run (to the recipe's progress), as
    ``autotune.training._apply.one_cycle(optimizer, config, **one_cycle)`` takes them."""
    from autotune.training._apply import ONE_CYCLE_DEFAULTS, steps_per_epoch

    dataset_size = chosen.record.dataset_size
    total_steps = None
    if dataset_size:
        total_steps = max(1, int(steps_per_epoch(dataset_size, config) * _epochs(budgets, chosen)))
    return {
        "max_lr": config.max_lr,
        "total_steps": total_steps,
        **ONE_CYCLE_DEFAULTS,
        # Only optimizers with momentum or betas cycle it (on plain SGD it would switch momentum on).
        "cycle_momentum": chosen.record.cycle_momentum,
    }


def _measured(chosen: Candidate) -> dict[str, Any]:
    measured: dict[str, Any] = {key: getattr(chosen.record, key) for key in MEASURED_FIELDS}
    measured["samples_per_second"] = chosen.samples_per_second  # the re-measured figure after --verify
    measured["unit_per_second"] = chosen.rate  # likewise, in the workload's unit
    measured["effective_batch_size"] = TrainConfig.from_dict(chosen.record.config).effective_batch_size
    measured["window_samples_per_second"] = chosen.record.window_samples_per_second
    return measured


def _epochs(budgets: Budgets, chosen: Candidate) -> float:
    """The full run's epochs at the chosen config: the recipe's, times the samples it needs to reach
    the recipe's progress at its effective batch."""
    projection = budgets.projection(chosen.attrs, chosen.samples_per_second) or {}
    return budgets.epochs * projection.get("progress_factor", 1.0)


def _full_run(selection: Selection, budgets: Budgets) -> dict[str, Any]:
    chosen = selection.chosen
    projection = budgets.projection(chosen.attrs, chosen.samples_per_second) or {}
    factor = projection.get("progress_factor", 1.0)
    return {
        "epochs": _epochs(budgets, chosen),  # to the recipe's progress: autotune train's default length
        "recipe_epochs": budgets.epochs,
        "steps": None if budgets.steps is None else round(projection.get("optimizer_steps") or budgets.steps),
        "recipe_steps": budgets.steps,
        "samples_factor": factor,
        "dataset_size": chosen.record.dataset_size,
        "projected_seconds": projection.get("seconds"),
        "includes": projection.get("includes"),
        "warmup_seconds": projection.get("warmup_seconds"),
        "compile_seconds": projection.get("compile_seconds"),
        "evaluation_seconds": projection.get("evaluation_seconds"),
        "deadline_seconds": budgets.deadline_seconds,
        "safety_margin_seconds": budgets.safety_margin_seconds,
        "fits_deadline": selection.fits_deadline if budgets.deadline_seconds is not None else None,
        "memory_budget_bytes": budgets.memory_budget_bytes,
        "memory_limit_bytes": budgets.memory_limit_bytes,
    }


def _baseline_rate(selection: Selection, baseline_trial: FrozenTrial | None) -> float | None:
    """The baseline's samples/s (what projections take), re-measured when it was."""
    if selection.baseline is not None:
        return selection.baseline.samples_per_second
    record = None if baseline_trial is None else TrialRecord.of(baseline_trial)
    if record is not None and record.status == "ok":
        return float(record.samples_per_second or 0.0) or None
    return None


def _speedup(selection: Selection, baseline_trial: FrozenTrial | None) -> float | None:
    """The chosen config's throughput over the baseline's, in the workload's unit."""
    if selection.baseline is not None:
        baseline = selection.baseline.rate
    elif baseline_trial is not None and TrialRecord.of(baseline_trial).status == "ok":
        baseline = _records.rate(baseline_trial)
    else:
        return None
    return round(selection.chosen.rate / baseline, 4) if baseline else None


def _payoff(
    selection: Selection, budgets: Budgets, baseline_trial: FrozenTrial | None, search_seconds: float
) -> dict[str, Any]:
    """Speedup, both full runs' projections, and whether the search paid for itself."""
    chosen_seconds = budgets.project(selection.chosen.attrs, selection.chosen.samples_per_second)
    baseline_rate = _baseline_rate(selection, baseline_trial)
    baseline_seconds = (
        budgets.project(TrialRecord.of(baseline_trial), baseline_rate)
        if baseline_trial is not None and baseline_rate
        else None
    )
    saved = baseline_seconds - chosen_seconds if baseline_seconds is not None and chosen_seconds is not None else None
    projection = budgets.projection(selection.chosen.attrs, selection.chosen.samples_per_second) or {}
    payoff = {
        "speedup_over_baseline": _speedup(selection, baseline_trial),
        # The full run to the recipe's progress, against the recipe's: what the user's run gains.
        "time_speedup": baseline_seconds / chosen_seconds if baseline_seconds and chosen_seconds else None,
        "samples_factor": projection.get("progress_factor", 1.0),
        "unit_per_second": selection.chosen.rate,  # the chosen config's (re-measured with --verify), in its unit
        "unit": _records.unit(selection.chosen.attrs),
        "projected_seconds": chosen_seconds,
        "baseline_projected_seconds": baseline_seconds,
        "saved_seconds": saved,
        "search_seconds": search_seconds,
        "pays_back": None if saved is None else saved > search_seconds,
    }
    payoff["line"] = payoff_line(payoff)
    return payoff


def payoff_line(payoff: dict[str, Any]) -> str:
    speedup, saved, search = payoff["speedup_over_baseline"], payoff["saved_seconds"], payoff["search_seconds"]
    if speedup is None or saved is None:
        return f"no baseline measurement to compare with; the search took {format_duration(search)}"
    rate = (
        f" at {payoff['unit_per_second']:.1f} {payoff.get('unit', 'samples')}/s"
        if payoff.get("unit_per_second")
        else ""
    )
    factor = payoff.get("samples_factor") or 1.0
    if factor != 1.0:  # a changed effective batch: throughput alone would not say what the run gains
        line = (
            f"{speedup:.2f}x the baseline's throughput{rate}, with {factor:.3g}x its samples to the recipe's "
            f"progress: the full run projects {format_duration(payoff['projected_seconds'])} instead of "
            f"{format_duration(payoff['baseline_projected_seconds'])}"
        )
    else:
        line = (
            f"{speedup:.2f}x the baseline{rate}: the full run projects {format_duration(payoff['projected_seconds'])} "
            f"instead of {format_duration(payoff['baseline_projected_seconds'])}"
        )
    if saved <= 0:
        return line + f"; the search took {format_duration(search)} and saves nothing"
    if saved <= search:
        verdict = "does not pay for itself on one run"
    else:
        verdict = f"pays for itself {saved / search:.1f}x over" if search > 0 else "pays for itself"
    return line + f", saving {format_duration(saved)} for a {format_duration(search)} search ({verdict})"
