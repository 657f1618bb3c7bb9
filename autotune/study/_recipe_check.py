"""The recipe check: a config that changes the recipe (its effective batch, its max_lr) is run to the
recipe's progress beside the recipe itself, on the same data, over several seeds, and kept only if
it ends no worse within the seed spread.

"The same progress" is the empirical model's (autotune.training._noise_scale): the recipe runs N optimizer
steps at its effective batch B0 on OneCycle; the candidate runs as many steps at its effective batch
B as make ``N x B0 x samples_factor(B)`` samples, on OneCycle over its own steps, at its own max_lr.
Each run then takes the workload's loss over the same fixed samples (eval mode, fp32, no_grad).
The candidate is compared with the recipe's own config and base_lr, never with another learning
rate at the new batch: what it must show is that the user's model does not get worse.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Mapping
from typing import Any

from autotune.knobs._config import TrainConfig
from autotune.runner import MeasureSettings, Status, TrialJob, run_trial
from autotune.store._records import StudySetup, TrialRecord, as_record, as_setup, effective_batch_of
from autotune.study._budget import Budgets

SEEDS = 3  # runs of each side; the verdict allows their spread
RUN_WINDOWS = 10  # without a time budget, a run of the recipe lasts about this many of the study's windows
MIN_RECIPE_STEPS = 20  # fewer optimizer steps of the recipe say nothing of where it is going
EVAL_SAMPLES = 512  # the fixed samples each run's loss is taken over
BUDGET_SHARE = 0.75  # of the time left; the side-by-side re-measurement after it needs some too
STORED = "recipe_check"  # study user attributes recipe_check.<trial>@<max_lr>, one per check


@dataclasses.dataclass(frozen=True)
class RecipeCheck:
    """A candidate against the recipe at equal progress: both sides' losses per seed and the verdict."""

    trial: int
    config: dict[str, Any]  # the candidate as checked, its max_lr included
    recipe_config: dict[str, Any]  # the baseline's config at the recipe's base_lr
    effective_batch: int
    recipe_effective_batch: int
    noise_scale: float | None
    samples_factor: float
    steps: int  # the candidate's optimizer steps
    recipe_steps: int
    seeds: list[int]
    losses: list[float | None]  # per seed; None: the run failed or diverged
    recipe_losses: list[float | None]
    kept: bool
    reason: str
    seconds: float
    recipe_trial: int = 0  # the baseline trial whose config ran as the recipe
    finished: float = 0.0  # time.time() at the end: the order checks ran in

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RecipeCheck:
        return cls(**data)


def changes_recipe(config: dict[str, Any], recipe: dict[str, Any], recipe_effective_batch: int) -> list[str]:
    """What of the recipe ``config`` changes: its effective batch, its max_lr (one line each; [] for none)."""
    candidate = TrainConfig.from_dict(config)
    changes = []
    if candidate.effective_batch_size != recipe_effective_batch:
        changes.append(f"effective batch {candidate.effective_batch_size} (the recipe's {recipe_effective_batch})")
    if not math.isclose(candidate.max_lr, float(recipe["max_lr"]), rel_tol=1e-9):
        changes.append(f"max_lr {candidate.max_lr:.3g} (the recipe's {float(recipe['max_lr']):.3g})")
    return changes


def plan_steps(
    trial_attrs: TrialRecord | Mapping[str, Any],
    recipe_attrs: TrialRecord | Mapping[str, Any],
    budgets: Budgets,
    *,
    seconds_left: float | None,
    run_seconds: float = 20.0,
    seeds: int = SEEDS,
) -> tuple[int, int] | str:
    """(the recipe's steps, the candidate's steps) for a check that fits: each run of the recipe about
    ``run_seconds`` long, or all 2 x seeds runs within ``seconds_left``, and no longer than the full run.
    A sentence saying why not when even MIN_RECIPE_STEPS do not fit."""
    recipe_batch = budgets.baseline_effective_batch or effective_batch_of(recipe_attrs)
    batch = effective_batch_of(trial_attrs)
    factor = _factor(batch, recipe_batch, budgets)
    recipe_rate, rate = as_record(recipe_attrs).samples_per_second, as_record(trial_attrs).samples_per_second
    if not recipe_rate or not rate:
        return "a side has no measured throughput to size the runs by"
    per_recipe_step = recipe_batch / recipe_rate + factor * recipe_batch / rate  # seconds, both sides
    if seconds_left is None:
        steps = int(run_seconds * recipe_rate / recipe_batch)
    else:
        fixed = _start_seconds(trial_attrs) + _start_seconds(recipe_attrs)  # process start, build, compile
        steps = int((seconds_left / seeds - fixed) / per_recipe_step)
    recipe_run = dataclasses.replace(
        as_record(recipe_attrs), config={"batch_size": recipe_batch, "accumulation_steps": 1}
    )
    full = budgets.projection(recipe_run)
    if full is not None:
        steps = min(steps, max(1, int(full["samples"] / recipe_batch)))
    if steps < MIN_RECIPE_STEPS:
        return (
            f"the time budget leaves room for {max(steps, 0)} of the recipe's steps per run, fewer than "
            f"{MIN_RECIPE_STEPS}"
        )
    return steps, max(1, round(steps * recipe_batch * factor / batch))


def run_check(
    setup: StudySetup | Mapping[str, Any],
    trial: Any,
    recipe: Any,
    max_lr: float,
    budgets: Budgets,
    *,
    deadline: float | None = None,
    seeds: int = SEEDS,
) -> RecipeCheck | str:
    """Run trial ``trial``'s config at ``max_lr`` to the recipe's progress beside the recipe (the
    baseline trial ``recipe``'s config at base_lr), ``seeds`` times each, interleaved. A sentence
    saying why when it cannot run within ``deadline``."""
    setup = as_setup(setup)
    began = time.monotonic()
    attrs, recipe_attrs = TrialRecord.of(trial), TrialRecord.of(recipe)
    left = None if deadline is None else (deadline - began) * BUDGET_SHARE
    run_seconds = RUN_WINDOWS * float((setup.measure or {}).get("window_seconds", 1.0))
    steps = plan_steps(attrs, recipe_attrs, budgets, seconds_left=left, run_seconds=run_seconds, seeds=seeds)
    if isinstance(steps, str):
        return steps
    recipe_steps, candidate_steps = steps
    config = {**attrs.config, "max_lr": max_lr}
    recipe_config = {**recipe_attrs.config, "max_lr": float(setup.baseline["max_lr"])}
    base_seed = int((setup.measure or {}).get("seed", 0))
    numbers = [base_seed + 1 + index for index in range(seeds)]
    losses, recipe_losses, failures = _interleaved(
        setup, (config, candidate_steps), (recipe_config, recipe_steps), numbers, deadline, 3 * run_seconds
    )
    batch = effective_batch_of(attrs)
    recipe_batch = budgets.baseline_effective_batch or effective_batch_of(recipe_attrs)
    kept, reason = _verdict(
        trial.number, losses, recipe_losses, candidate_steps, recipe_steps, failures, batch, recipe_batch
    )
    return _record(
        setup,
        trial,
        recipe,
        max_lr,
        budgets,
        steps=candidate_steps,
        recipe_steps=recipe_steps,
        seeds=numbers,
        losses=losses,
        recipe_losses=recipe_losses,
        kept=kept,
        reason=reason,
        seconds=time.monotonic() - began,
    )


def _interleaved(
    setup: StudySetup,
    candidate: tuple[dict[str, Any], int],
    recipe: tuple[dict[str, Any], int],
    seeds: list[int],
    deadline: float | None,
    least_timeout: float,
) -> tuple[list[float | None], list[float | None], list[str]]:
    """Each (config, steps) side run once per seed, the recipe first each time: the candidate's losses,
    the recipe's, and a line for each run that failed."""
    losses: list[float | None] = []
    recipe_losses: list[float | None] = []
    failures: list[str] = []
    for seed in seeds:
        for side, (run_config, run_steps), into in (
            ("recipe", recipe, recipe_losses),
            ("candidate", candidate, losses),
        ):
            loss, failure = _run(setup, run_config, run_steps, seed, deadline, least_timeout)
            into.append(loss)
            if failure:
                failures.append(f"the {side}'s run with seed {seed} {failure}")
    return losses, recipe_losses, failures


def not_run(
    setup: StudySetup | Mapping[str, Any], trial: Any, recipe: Any, max_lr: float, budgets: Budgets, reason: str
) -> RecipeCheck:
    """The record of a check that could not run (the time budget was spent): not kept, and why."""
    setup = as_setup(setup)
    return _record(
        setup,
        trial,
        recipe,
        max_lr,
        budgets,
        steps=0,
        recipe_steps=0,
        seeds=[],
        losses=[],
        recipe_losses=[],
        kept=False,
        reason=reason,
        seconds=0.0,
    )


def _record(
    setup: StudySetup | Mapping[str, Any], trial: Any, recipe: Any, max_lr: float, budgets: Budgets, **outcome: Any
) -> RecipeCheck:
    """A check of trial ``trial`` at ``max_lr`` against the baseline trial ``recipe``, with its outcome."""
    setup = as_setup(setup)
    batch = effective_batch_of(trial)
    recipe_batch = budgets.baseline_effective_batch or effective_batch_of(recipe)
    return RecipeCheck(
        trial=trial.number,
        config={**TrialRecord.of(trial).config, "max_lr": max_lr},
        recipe_config={**TrialRecord.of(recipe).config, "max_lr": float(setup.baseline["max_lr"])},
        effective_batch=batch,
        recipe_effective_batch=recipe_batch,
        noise_scale=budgets.noise_scale,
        samples_factor=_factor(batch, recipe_batch, budgets),
        recipe_trial=recipe.number,
        finished=time.time(),
        **outcome,
    )


def store(study: Any, check: RecipeCheck) -> None:
    """Keep the check with the study, as its own user attribute ``recipe_check.<trial>@<max_lr>`` (short
    enough for optuna-dashboard to show whole: the configs are the trial's and the baseline's)."""
    record = {key: value for key, value in check.to_json().items() if key not in ("config", "recipe_config")}
    record["max_lr"] = check.config["max_lr"]
    record["recipe_max_lr"] = check.recipe_config["max_lr"]
    study.set_user_attr(f"{STORED}.{check.trial}@{check.config['max_lr']:.6g}", record)


def stored_checks(study: Any, trial: int | None = None) -> list[RecipeCheck]:
    """The study's checks (of one trial), in the order they ran."""
    attrs = study.user_attrs
    configs = {t.number: TrialRecord.of(t).config for t in study.get_trials(deepcopy=False)}
    checks = []
    for key, data in attrs.items():
        if not key.startswith(STORED + ".") or not isinstance(data, dict) or configs.get(data["trial"]) is None:
            continue
        if trial is not None and data["trial"] != trial:
            continue
        recipe = next((c for n, c in configs.items() if c and n == data.get("recipe_trial")), None) or {}
        values = {key: value for key, value in data.items() if key not in ("max_lr", "recipe_max_lr")}
        checks.append(
            RecipeCheck(
                config={**configs[data["trial"]], "max_lr": data["max_lr"]},
                recipe_config={**recipe, "max_lr": data.get("recipe_max_lr")},
                **values,
            )
        )
    return sorted(checks, key=lambda check: check.finished)


def stored_check(study: Any, config: dict[str, Any]) -> RecipeCheck | None:
    """The latest check of exactly ``config`` (its max_lr included) that ran, if one did."""
    found = [check for check in stored_checks(study) if check.config == config and check.steps]
    return found[-1] if found else None


def _run(
    setup: StudySetup | Mapping[str, Any],
    config: dict[str, Any],
    steps: int,
    seed: int,
    deadline: float | None,
    least_timeout: float,
) -> tuple[float | None, str]:
    setup = as_setup(setup)
    job = TrialJob(
        workload=setup.workload,
        config=config,
        device=setup.torch_device,
        measure=MeasureSettings(seed=seed),
        memory_budget_bytes=Budgets.from_json(setup.budgets).memory_budget_bytes,
        timeout_seconds=max(float(setup.trial_timeout_seconds), least_timeout),
        lr_sweep={"mode": "progress", "steps": steps, "eval_samples": EVAL_SAMPLES},
        step_closure=setup.step_closure,
    )
    outcome = run_trial(job, deadline=deadline)
    curve = outcome.lr_curve or {}
    if outcome.status is not Status.OK:
        return None, f"ended as {outcome.status.value}: {outcome.reason}"
    loss = curve.get("eval_loss")
    if loss is None or not math.isfinite(loss):
        return None, f"diverged (loss {curve.get('losses', [None])[-1]} after {len(curve.get('losses', []))} steps)"
    return float(loss), ""


def _verdict(
    number: int,
    losses: list[float | None],
    recipe_losses: list[float | None],
    steps: int,
    recipe_steps: int,
    failures: list[str],
    batch: int,
    recipe_batch: int,
) -> tuple[bool, str]:
    done = [value for value in losses if value is not None]
    recipe_done = [value for value in recipe_losses if value is not None]
    runs = (
        f"trial #{number} in {steps} steps at effective batch {batch}, the recipe in {recipe_steps} steps at "
        f"{recipe_batch}"
    )
    if failures or len(done) < 2 or len(recipe_done) < 2:
        return False, f"{runs}: not kept, {failures[0] if failures else 'too few runs finished'}"
    mean, recipe_mean = statistics.fmean(done), statistics.fmean(recipe_done)
    spread = max(statistics.stdev(done), statistics.stdev(recipe_done))
    figures = (
        f"loss {mean:.4g} ± {statistics.stdev(done):.2g} against the recipe's {recipe_mean:.4g} ± "
        f"{statistics.stdev(recipe_done):.2g} over {len(done)} seeds"
    )
    if mean <= recipe_mean + spread:
        return True, f"{runs}: {figures}, no worse within the seed spread"
    return False, f"{runs}: {figures}, worse by {mean - recipe_mean:.3g}, beyond the seed spread ({spread:.2g})"


def _factor(batch: int, recipe_batch: int, budgets: Budgets) -> float:
    from autotune.training._noise_scale import samples_factor

    return samples_factor(batch, recipe_batch, budgets.noise_scale)


def _start_seconds(attrs: TrialRecord | Mapping[str, Any]) -> float:
    """A run's cost before its first step: the process start and the trial's warm-up (compile included)."""
    record = as_record(attrs)
    return float(record.startup_seconds or 0.0) + float(record.warmup_seconds or 0.0)


def exportable(
    candidates: list[Any],
    setup: StudySetup | Mapping[str, Any],
    checks: list[RecipeCheck],
    keep_trials: tuple[int, ...] = (),
) -> tuple[list[Any], list[str]]:
    """The candidates (selection.Candidate) a study may export where the effective batch is free: those
    at the recipe's effective batch, and those at another that a recipe check kept; with a line on the
    rest (``keep_trials`` are kept whatever). Where the space fixes the effective batch (the recipe's, or
    the user's --effective-batch N), or the study recorded no recipe batch, every candidate."""
    setup = as_setup(setup)
    recipe_batch = (setup.budgets or {}).get("baseline_effective_batch")
    if recipe_batch is None or "effective_batch" in (setup.space or {}):
        return list(candidates), []
    kept_trials = {check.trial for check in checks if check.kept} | set(keep_trials)
    keep: list[Any] = []
    dropped: list[Any] = []
    for candidate in candidates:
        batch = effective_batch_of(candidate.attrs)
        (keep if candidate.is_baseline or batch == recipe_batch or candidate.number in kept_trials else dropped).append(
            candidate
        )
    if not dropped:
        return keep, []
    reasons = {check.trial: check.reason for check in checks}
    named = ", ".join(f"#{c.number}" for c in dropped[:6]) + (", ..." if len(dropped) > 6 else "")
    line = (
        f"{len(dropped)} trial{'s' if len(dropped) > 1 else ''} at another effective batch than the recipe's "
        f"{recipe_batch} ({named}) {'are' if len(dropped) > 1 else 'is'} not exported without a recipe check "
        "that keeps it"
    )
    lines = [line] + [f"recipe check: {reasons[c.number]}" for c in dropped if c.number in reasons]
    return keep, lines
