"""The LR range test: a measured max_lr for OneCycle, for the config autotune exports.

The rule, from the smoothed loss curve of an exponential LR sweep:

    max_lr = min(lr_at_min_loss / 4, lr_steepest), and never below lr_at_min_loss / 10

``lr_at_min_loss`` is where the smoothed loss bottoms out (past it the run is unstable);
``lr_steepest`` is where the loss falls fastest against log(LR), looked for between a hundredth
of ``lr_at_min_loss`` and it (Lightning's suggestion). A quarter of the minimum keeps OneCycle's
peak clear of the edge; the steepest point pulls it lower when the curve turns early; a tenth of
the minimum keeps a noisy early drop from making it absurdly small.

The suggestion is then checked before it is exported: a short run on the exported schedule
(OneCycle compressed to ``CHECK_STEPS`` steps) peaking at the suggestion, against the same run
(same seed, same batches) peaking at the workload's base_lr scaled to the new effective batch.
The suggestion is kept only if it does not diverge and its loss at the end is no worse.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from autotune.exceptions import AutotuneError, StudyError
from autotune.knobs._config import TrainConfig
from autotune.runner import MeasureSettings, Status, TrialJob, run_trial
from autotune.store._records import StudySetup, TrialRecord
from autotune.study._budget import Budgets

Scaling = Literal["auto", "adascale", "linear", "sqrt", "none"]
SCALINGS: tuple[str, ...] = ("auto", "adascale", "linear", "sqrt", "none")
MIN_LOSS_DIVISOR = 4.0
FLOOR_DIVISOR = 10.0
DEFAULT_STEPS = 100
DEFAULT_SPAN = 100.0  # the sweep runs from centre / span to centre x span
MAX_SHIFTS = 2  # times the sweep moves when its minimum sits at one of its ends
CHECK_STEPS = 40  # optimizer steps of each check run
CHECK_TAIL = 5  # the check compares the mean loss of each run's last steps


class LRFindError(AutotuneError):
    """The LR range test could not run, or its curve has no usable minimum."""


@dataclasses.dataclass(frozen=True)
class LRFindResult:
    config: dict[str, Any]
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    stopped_early: bool
    suggestion: float
    lr_at_min_loss: float
    lr_steepest: float
    centre_lr: float
    trial: int | None = None
    check: dict[str, Any] | None = None  # the suggestion against the scaled base_lr (see LRCheck)
    rule: str | None = None  # how base_lr was scaled to the effective batch for the sweep's centre

    @property
    def max_lr(self) -> float:
        """The rate to export: the suggestion, unless its check run lost to the scaled base_lr."""
        if self.check is not None and not self.check["kept"]:
            return float(self.check["scaled_base_lr"])
        return self.suggestion

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LRFindResult:
        return cls(**data)


def suggest_max_lr(lrs: Sequence[float], smoothed: Sequence[float]) -> tuple[float, float, float]:
    """(suggestion, lr_at_min_loss, lr_steepest) from a sweep's smoothed losses; see the module doc."""
    points = list(zip(lrs, smoothed, strict=False))
    if len(points) < 5:
        raise LRFindError(f"the LR sweep stopped after {len(points)} steps: too few to read a curve from")
    skip = max(1, len(points) // 10)  # the first points are mostly the average warming up
    usable = points[skip:]
    min_index = min(range(len(usable)), key=lambda i: usable[i][1])
    lr_min = usable[min_index][0]
    window = [(lr, loss) for lr, loss in usable[: min_index + 1] if lr >= lr_min / 100]
    slopes = [
        ((b_loss - a_loss) / (math.log(b_lr) - math.log(a_lr)), a_lr)
        for (a_lr, a_loss), (b_lr, b_loss) in zip(window, window[1:], strict=False)
    ]
    lr_steep = min(slopes)[1] if slopes else lr_min / MIN_LOSS_DIVISOR
    suggestion = max(min(lr_min / MIN_LOSS_DIVISOR, lr_steep), lr_min / FLOOR_DIVISOR)
    return suggestion, lr_min, lr_steep


def scaling_rule(scaling: str, adaptive_optimizer: bool | None) -> str:
    """The rule ``auto`` stands for: the square root for Adam's kind (optimizers with betas; Malladi et
    al., 2022), AdaScale's gain for SGD's (Johnson et al., 2020); any other name is itself."""
    if scaling != "auto":
        return scaling
    return "sqrt" if adaptive_optimizer else "adascale"


def scaled_lr(
    base_lr: float,
    effective_batch: int,
    baseline_effective_batch: int,
    scaling: str,
    noise_scale: float | None = None,
    adaptive_optimizer: bool | None = None,
) -> float:
    """base_lr moved to a new effective batch: by AdaScale's gain at the gradient noise scale
    (``adascale``: linear far below it, flat far above it; with no noise scale measured, no change),
    linearly, by the square root, or not at all; ``auto`` picks by the optimizer (scaling_rule)."""
    from autotune.training import _noise_scale as noise

    ratio = effective_batch / baseline_effective_batch
    rule = scaling_rule(scaling, adaptive_optimizer)
    if rule == "adascale":
        return base_lr * (noise.gain(effective_batch, baseline_effective_batch, noise_scale) if noise_scale else 1.0)
    return base_lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[rule]


def lr_find(
    workload: str,
    config: TrainConfig,
    centre_lr: float,
    *,
    device: str = "cpu",
    steps: int = DEFAULT_STEPS,
    span: float = DEFAULT_SPAN,
    memory_budget_bytes: int | None = None,
    timeout_seconds: float = 600.0,
    seed: int = 0,
    deadline: float | None = None,
    step_closure: bool | None = None,
) -> LRFindResult:
    """Run the range test for ``config`` in a fresh process, sweeping centre_lr / span .. centre_lr x span.

    A curve whose minimum sits at an end of the sweep has not found the edge: the sweep moves
    a span up (or down) and runs again, at most twice."""
    for attempt in range(1 + MAX_SHIFTS):
        last = attempt == MAX_SHIFTS
        curve = _sweep(
            workload,
            config,
            centre_lr,
            device,
            steps,
            span,
            memory_budget_bytes,
            timeout_seconds,
            seed,
            deadline,
            step_closure,
        )
        if curve["stopped_early"] and len(curve["smoothed"]) < 5 and not last:
            centre_lr /= span  # blew up at once: the edge lies below this sweep
            continue
        suggestion, lr_min, lr_steep = suggest_max_lr(curve["lrs"], curve["smoothed"])
        end = _minimum_at_end(curve, lr_min)
        if last or end is None:
            break
        centre_lr = centre_lr * span if end == "top" else centre_lr / span
    return _result(config, curve, centre_lr, (suggestion, lr_min, lr_steep))


def _result(
    config: TrainConfig, curve: dict[str, Any], centre_lr: float, read: tuple[float, float, float]
) -> LRFindResult:
    """The range test's result: the last sweep's curve, around ``centre_lr``, and what suggest_max_lr read from it."""
    suggestion, lr_min, lr_steep = read
    return LRFindResult(
        config=config.to_dict(),
        lrs=curve["lrs"],
        losses=curve["losses"],
        smoothed=curve["smoothed"],
        stopped_early=curve["stopped_early"],
        suggestion=suggestion,
        lr_at_min_loss=lr_min,
        lr_steepest=lr_steep,
        centre_lr=centre_lr,
    )


def _minimum_at_end(curve: dict[str, Any], lr_min: float) -> Literal["top", "bottom"] | None:
    """The end of the sweep where the curve's minimum ``lr_min`` sits (the top first), or None inside it."""
    edge = len(curve["smoothed"]) // 20 + 1
    at_top = not curve["stopped_early"] and lr_min >= curve["lrs"][-edge]
    at_bottom = lr_min <= curve["lrs"][len(curve["lrs"]) // 10 + edge]
    if at_top:
        return "top"
    return "bottom" if at_bottom else None


@dataclasses.dataclass(frozen=True)
class LRCheck:
    """The suggestion's check: two short runs on the compressed OneCycle schedule, same seed."""

    steps: int
    suggested_lr: float
    scaled_base_lr: float
    suggested_losses: list[float]
    scaled_base_losses: list[float]
    suggested_loss: float | None  # mean of the last CHECK_TAIL losses; None when it diverged
    scaled_base_loss: float | None
    kept: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def check_suggestion(
    workload: str,
    config: TrainConfig,
    suggested_lr: float,
    scaled_base_lr: float,
    *,
    device: str = "cpu",
    steps: int = CHECK_STEPS,
    divergence_factor: float | None = 4.0,
    memory_budget_bytes: int | None = None,
    timeout_seconds: float = 600.0,
    seed: int = 0,
    deadline: float | None = None,
    step_closure: bool | None = None,
) -> LRCheck:
    """Run the exported schedule at ``suggested_lr`` and at ``scaled_base_lr`` (each in a fresh
    process, same seed and batches) and keep the suggestion only if it does not diverge and ends
    no worse."""
    runs = {}
    for name, lr in (("suggested", suggested_lr), ("scaled_base", scaled_base_lr)):
        job = TrialJob(
            workload=workload,
            config=dataclasses.replace(config, max_lr=lr).to_dict(),
            device=device,
            measure=MeasureSettings(seed=seed),
            memory_budget_bytes=memory_budget_bytes,
            timeout_seconds=timeout_seconds,
            lr_sweep={"mode": "check", "steps": steps},
            step_closure=step_closure,
        )
        runs[name] = _check_run(job, lr, deadline)
    ending = {name: _ending_loss(losses, steps, divergence_factor) for name, losses in runs.items()}
    suggested, base = ending["suggested"], ending["scaled_base"]
    kept, reason = _check_verdict(suggested, base, suggested_lr, scaled_base_lr, steps)
    return LRCheck(
        steps=steps,
        suggested_lr=suggested_lr,
        scaled_base_lr=scaled_base_lr,
        suggested_losses=runs["suggested"],
        scaled_base_losses=runs["scaled_base"],
        suggested_loss=suggested,
        scaled_base_loss=base,
        kept=kept,
        reason=reason,
    )


def _check_run(job: TrialJob, lr: float, deadline: float | None) -> list[float]:
    """The losses of one check run at max_lr ``lr``, in a fresh process; an LRFindError where it did not finish."""
    outcome = run_trial(job, deadline=deadline)
    if outcome.status is not Status.OK or outcome.lr_curve is None:
        raise LRFindError(f"the check run at max_lr {lr:.3g} ended as {outcome.status.value}: {outcome.reason}")
    return outcome.lr_curve["losses"]


def _check_verdict(
    suggested: float | None, base: float | None, suggested_lr: float, scaled_base_lr: float, steps: int
) -> tuple[bool, str]:
    """Whether the suggestion is kept, from the two runs' ending losses (None: diverged), and why."""
    compared = f"{steps} steps of the exported schedule"
    if suggested is None:
        return False, f"max_lr {suggested_lr:.3g} diverged in {compared}"
    if base is not None and suggested > base:
        return (
            False,
            (
                f"max_lr {suggested_lr:.3g} ended at loss {suggested:.4g} after {compared}, worse than "
                f"{base:.4g} at the scaled base_lr {scaled_base_lr:.3g}"
            ),
        )
    against = "which diverged" if base is None else f"loss {base:.4g}"
    return True, (
        f"max_lr {suggested_lr:.3g} ended at loss {suggested:.4g} after {compared}, no worse than the "
        f"scaled base_lr {scaled_base_lr:.3g} ({against})"
    )


def _ending_loss(losses: Sequence[float], steps: int, divergence_factor: float | None) -> float | None:
    """The mean of the last losses, or None when the run diverged (NaN, infinite, or risen above
    divergence_factor x its first loss, or stopped short)."""
    if len(losses) < steps or not all(math.isfinite(value) for value in losses):
        return None
    if divergence_factor is not None and losses[0] > 0 and max(losses) > divergence_factor * losses[0]:
        return None
    tail = losses[-CHECK_TAIL:]
    return sum(tail) / len(tail)


def _sweep(
    workload: str,
    config: TrainConfig,
    centre_lr: float,
    device: str,
    steps: int,
    span: float,
    memory_budget_bytes: int | None,
    timeout_seconds: float,
    seed: int,
    deadline: float | None = None,
    step_closure: bool | None = None,
) -> dict[str, Any]:
    job = TrialJob(
        workload=workload,
        config=config.to_dict(),
        device=device,
        measure=MeasureSettings(seed=seed),
        memory_budget_bytes=memory_budget_bytes,
        timeout_seconds=timeout_seconds,
        lr_sweep={"min_lr": centre_lr / span, "max_lr": centre_lr * span, "steps": steps},
        step_closure=step_closure,
    )
    outcome = run_trial(job, deadline=deadline)
    if outcome.status is not Status.OK or outcome.lr_curve is None:
        raise LRFindError(f"the LR range test ended as {outcome.status.value}: {outcome.reason}")
    return outcome.lr_curve


def lr_find_for_trial(
    study: Any,
    trial_number: int | None = None,
    *,
    scaling: Scaling = "auto",
    steps: int = DEFAULT_STEPS,
    check_steps: int = CHECK_STEPS,
    deadline: float | None = None,
) -> LRFindResult:
    """Run the range test on a study's trial (default: its fastest feasible one), check its
    suggestion against base_lr scaled to the trial's effective batch, and store the curve, the
    suggestion and the check with the study (user attribute ``lr_find``), where optuna-dashboard
    shows them."""
    from autotune.store import _records

    trials = study.get_trials(deepcopy=False)
    trial = _trial_to_test(study, trials, trial_number)
    setup = _records.read_setup(study)
    record = TrialRecord.of(trial)
    config = TrainConfig.from_dict(record.config)
    baseline = TrainConfig.from_dict(setup.baseline)
    budgets = Budgets.from_json(setup.budgets).with_noise_scale(trials)
    # The recipe's own effective batch and base_lr are where the scaling starts from.
    recipe_batch = budgets.baseline_effective_batch or baseline.effective_batch_size
    adaptive = record.adaptive_optimizer
    centre = scaled_lr(
        baseline.max_lr, config.effective_batch_size, recipe_batch, scaling, budgets.noise_scale, adaptive
    )
    result, check = _test_and_check(setup, config, centre, budgets, steps, check_steps, deadline)
    result = dataclasses.replace(
        result, trial=trial.number, check=check.to_json(), rule=scaling_rule(scaling, adaptive)
    )
    stored = dict(study.user_attrs.get("lr_find", {}))
    stored[str(trial.number)] = result.to_json()
    study.set_user_attr("lr_find", stored)
    return result


def _trial_to_test(study: Any, trials: list[Any], trial_number: int | None) -> Any:
    """The study's trial ``trial_number`` (it must have a config), else its fastest feasible one."""
    from autotune.store import _records

    if trial_number is None:
        feasible = _records.feasible_trials(trials)
        if not feasible:
            raise StudyError(f"study {study.study_name!r} has no feasible trial to run the LR range test on")
        return max(feasible, key=_records.throughput)
    matching = [t for t in trials if t.number == trial_number]
    if not matching or not TrialRecord.of(matching[0]).config:
        raise StudyError(f"study {study.study_name!r} has no trial #{trial_number} with a config")
    return matching[0]


def _test_and_check(
    setup: StudySetup,
    config: TrainConfig,
    centre: float,
    budgets: Budgets,
    steps: int,
    check_steps: int,
    deadline: float | None,
) -> tuple[LRFindResult, LRCheck]:
    """The range test around ``centre`` with the study's settings, then its suggestion's check against ``centre``."""
    result = lr_find(
        setup.workload,
        config,
        centre,
        device=setup.torch_device,
        steps=steps,
        memory_budget_bytes=budgets.memory_budget_bytes,
        timeout_seconds=setup.trial_timeout_seconds,
        seed=setup.measure.get("seed", 0),
        deadline=deadline,
        step_closure=setup.step_closure,
    )
    measure = setup.measure
    check = check_suggestion(
        setup.workload,
        config,
        result.suggestion,
        centre,
        device=setup.torch_device,
        steps=check_steps,
        divergence_factor=measure.get("divergence_factor", 4.0),
        memory_budget_bytes=budgets.memory_budget_bytes,
        timeout_seconds=setup.trial_timeout_seconds,
        seed=measure.get("seed", 0),
        deadline=deadline,
        step_closure=setup.step_closure,
    )
    return result, check


def stored_result(study: Any, config: dict[str, Any]) -> LRFindResult | None:
    """A stored range test that applies to ``config``: same effective batch and precision."""
    wanted = TrainConfig.from_dict(config)
    for data in study.user_attrs.get("lr_find", {}).values():
        tested = TrainConfig.from_dict(data["config"])
        if tested.effective_batch_size == wanted.effective_batch_size and tested.precision == wanted.precision:
            return LRFindResult.from_json(data)
    return None


def plot(result: LRFindResult, path: str | Path) -> Path:
    """Loss against LR (log scale), the raw and smoothed curves, the suggestion marked; as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    axes.plot(result.lrs, result.losses, color="0.75", linewidth=1, label="loss")
    axes.plot(result.lrs[: len(result.smoothed)], result.smoothed, color="C0", linewidth=2, label="smoothed loss")
    axes.axvline(result.suggestion, color="C3", linestyle="--", label=f"suggested max_lr {result.suggestion:.3g}")
    axes.axvline(
        result.lr_at_min_loss, color="0.4", linestyle=":", label=f"minimum loss at {result.lr_at_min_loss:.3g}"
    )
    axes.set_xscale("log")
    finite = [v for v in result.smoothed if math.isfinite(v)]
    if finite:
        low, high = min(finite), max(finite)
        axes.set_ylim(low - 0.1 * (high - low), high + 0.3 * (high - low))
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss")
    title = "LR range test" + (f" (trial #{result.trial})" if result.trial is not None else "")
    axes.set_title(title)
    axes.legend()
    axes.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
