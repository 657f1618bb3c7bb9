"""The LR range test: the suggestion rule on synthetic curves, the sweep's shifts, the closed-form check on a
noisy quadratic, the plot, and the result stored with a study."""

from __future__ import annotations

import importlib.util
import math

import optuna
import pytest
from conftest import WORKLOADS, workload_spec

import autotune.study._lr_find as lr_find_module
from autotune.exceptions import StudyError
from autotune.export._export import export_best
from autotune.knobs._config import TrainConfig
from autotune.runner import MeasureSettings, TrialJob
from autotune.runner._sweep import run_lr_sweep
from autotune.store import _records
from autotune.study import _recipe_check as recipe_check
from autotune.study._budget import Budgets
from autotune.study._loop import search
from autotune.study._lr_find import (
    CHECK_STEPS,
    FLOOR_DIVISOR,
    MAX_SHIFTS,
    MIN_LOSS_DIVISOR,
    LRFindError,
    LRFindResult,
    check_suggestion,
    lr_find,
    lr_find_for_trial,
    plot,
    scaled_lr,
    stored_result,
    suggest_max_lr,
)
from autotune.study._options import SearchOptions
from autotune.workload import load_workload

FAST = MeasureSettings(warmup_steps=1, windows=2, window_seconds=0.2, max_window_steps=20)
QUADRATIC = workload_spec("workload", "quadratic.py")
STABLE_LIMIT = 0.2  # tests/workloads/quadratic.py: 2 / its largest curvature
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# --- suggest_max_lr on synthetic curves ---------------------------------------------------------------

LRS = [1e-4 * 10 ** (4 * i / 99) for i in range(100)]  # 1e-4 .. 1, geometric
MIN_INDEX = 75  # the smoothed loss bottoms out at LRS[75] (about 0.107), then rises sharply


def synthetic_curve(steep_index: int) -> list[float]:
    """Falls as a tanh in log(LR) whose steepest segment is LRS[steep_index] -> LRS[steep_index + 1],
    bottoms out at LRS[MIN_INDEX], then rises sharply."""
    centre = (math.log10(LRS[steep_index]) + math.log10(LRS[steep_index + 1])) / 2
    losses = [2.0 - math.tanh(3 * (math.log10(lr) - centre)) for lr in LRS[: MIN_INDEX + 1]]
    return losses + [losses[-1] + 5.0 * k for k in range(1, len(LRS) - MIN_INDEX)]


def test_suggest_max_lr_constants_are_the_documented_rule():
    assert (MIN_LOSS_DIVISOR, FLOOR_DIVISOR, MAX_SHIFTS) == (4.0, 10.0, 2)


def test_suggest_max_lr_quarter_of_the_minimum_when_the_steepest_point_is_higher():
    suggestion, lr_min, lr_steep = suggest_max_lr(LRS, synthetic_curve(68))  # steepest at 0.056 > 0.107 / 4
    assert lr_min == LRS[MIN_INDEX]
    assert lr_steep == LRS[68]
    assert suggestion == pytest.approx(lr_min / 4)


def test_suggest_max_lr_steepest_point_when_below_a_quarter_of_the_minimum():
    suggestion, lr_min, lr_steep = suggest_max_lr(LRS, synthetic_curve(55))  # steepest at 0.017
    assert lr_min == LRS[MIN_INDEX]
    assert lr_steep == LRS[55]
    assert lr_min / 10 < lr_steep < lr_min / 4
    assert suggestion == lr_steep


def test_suggest_max_lr_never_below_a_tenth_of_the_minimum():
    suggestion, lr_min, lr_steep = suggest_max_lr(LRS, synthetic_curve(45))  # steepest at 0.0066 < 0.107 / 10
    assert lr_steep == LRS[45]
    assert suggestion == pytest.approx(lr_min / 10)


@pytest.mark.parametrize("steep_index", [40, 45, 55, 60, 68, 70])
def test_suggest_max_lr_is_between_a_tenth_and_a_quarter_of_the_minimum(steep_index):
    suggestion, lr_min, _ = suggest_max_lr(LRS, synthetic_curve(steep_index))
    assert lr_min / 10 - 1e-15 <= suggestion <= lr_min / 4 + 1e-15


def test_suggest_max_lr_ignores_the_first_tenth_of_the_curve():
    smoothed = synthetic_curve(55)
    warming = [0.0] * 10 + smoothed[10:]  # the moving average warming up: lowest values, but meaningless
    assert suggest_max_lr(LRS, warming) == suggest_max_lr(LRS, smoothed)


def test_suggest_max_lr_looks_for_the_steepest_point_within_two_decades_below_the_minimum():
    smoothed = synthetic_curve(68)
    smoothed[12] -= 1.0  # a cliff near 1e-4, far more than two decades below the minimum
    smoothed[11] -= 1.0
    _, lr_min, lr_steep = suggest_max_lr(LRS, smoothed)
    assert lr_steep >= lr_min / 100
    assert lr_steep == LRS[68]


def test_suggest_max_lr_rising_curve_gives_a_quarter_of_its_first_usable_point():
    rising = [1.0 + 0.01 * i for i in range(20)]
    lrs = LRS[:20]
    suggestion, lr_min, lr_steep = suggest_max_lr(lrs, rising)
    assert lr_min == lrs[2]  # 20 // 10 points skipped
    assert lr_steep == pytest.approx(lr_min / 4)
    assert suggestion == pytest.approx(lr_min / 4)


@pytest.mark.parametrize("points", [0, 1, 4])
def test_suggest_max_lr_fewer_than_five_points_is_an_error(points):
    with pytest.raises(LRFindError) as caught:
        suggest_max_lr(LRS[:points], [1.0] * points)
    assert str(caught.value) == f"the LR sweep stopped after {points} steps: too few to read a curve from"


def test_suggest_max_lr_reads_only_the_smoothed_points():
    """A sweep that stopped on a NaN has one LR more than smoothed values."""
    smoothed = synthetic_curve(55)[:80]
    assert suggest_max_lr(LRS[:81], smoothed) == suggest_max_lr(LRS[:80], smoothed)


def test_scaled_lr_linear():
    assert scaled_lr(0.01, 256, 32, "linear") == pytest.approx(0.08)
    assert scaled_lr(0.01, 16, 32, "linear") == pytest.approx(0.005)


def test_scaled_lr_sqrt():
    assert scaled_lr(0.01, 256, 32, "sqrt") == pytest.approx(0.01 * math.sqrt(8))
    assert scaled_lr(0.01, 8, 32, "sqrt") == pytest.approx(0.005)


def test_scaled_lr_none_and_same_batch_keep_the_base():
    assert scaled_lr(0.01, 256, 32, "none") == 0.01
    for scaling in ("linear", "sqrt", "none"):
        assert scaled_lr(0.01, 32, 32, scaling) == pytest.approx(0.01)


def test_lr_find_result_json_round_trip():
    result = LRFindResult(
        config=TrainConfig().to_dict(),
        lrs=[1e-3, 1e-2],
        losses=[2.0, 1.0],
        smoothed=[2.0, 1.5],
        stopped_early=True,
        suggestion=2.5e-3,
        lr_at_min_loss=1e-2,
        lr_steepest=1e-3,
        centre_lr=1e-2,
        trial=3,
    )
    assert LRFindResult.from_json(result.to_json()) == result


# --- lr_find's shifts, with the sweep replaced by a response curve (no processes) ---------------------


def fake_sweeps(monkeypatch, edge: float = 0.1, power: float = 2.0) -> list[float]:
    """Replace the trial-process sweep by a noiseless loss: falling in log(LR) up to ``edge``, then
    rising as (lr / edge) ** power, stopped once 4x its best. Returns the list of centres swept."""
    centres: list[float] = []

    def sweep(
        workload,
        config,
        centre_lr,
        device,
        steps,
        span,
        memory_budget_bytes,
        timeout_seconds,
        seed,
        deadline=None,
        step_closure=None,
    ):
        centres.append(centre_lr)
        lrs, losses, best, stopped = [], [], math.inf, False
        for index in range(steps):
            lr = centre_lr / span * (span * span) ** (index / (steps - 1))
            floor = 1.0 - 0.05 * math.log10(edge)
            loss = 1.0 - 0.05 * math.log10(lr) if lr <= edge else floor * (lr / edge) ** power
            lrs.append(lr)
            losses.append(loss)
            best = min(best, loss)
            if index > 0 and loss > 4 * best:
                stopped = True
                break
        return {"lrs": lrs, "losses": losses, "smoothed": list(losses), "stopped_early": stopped}

    monkeypatch.setattr(lr_find_module, "_sweep", sweep)
    return centres


def test_lr_find_minimum_inside_the_range_sweeps_once(monkeypatch):
    centres = fake_sweeps(monkeypatch)
    result = lr_find("w.py:w", TrainConfig(), 1e-2)
    assert centres == [1e-2]
    assert result.centre_lr == 1e-2
    assert result.stopped_early is True
    assert result.lr_at_min_loss == pytest.approx(0.1, rel=0.1)
    assert result.config == TrainConfig().to_dict()
    assert result.trial is None


def test_lr_find_minimum_at_the_top_moves_the_sweep_up_a_span(monkeypatch):
    centres = fake_sweeps(monkeypatch)
    result = lr_find("w.py:w", TrainConfig(), 1e-4)
    assert centres == [1e-4, pytest.approx(1e-2)]
    assert result.centre_lr == pytest.approx(1e-2)
    assert result.lrs[0] == pytest.approx(1e-4)
    assert result.lr_at_min_loss == pytest.approx(0.1, rel=0.1)


def test_lr_find_minimum_at_the_bottom_moves_the_sweep_down_a_span(monkeypatch):
    centres = fake_sweeps(monkeypatch)
    result = lr_find("w.py:w", TrainConfig(), 100.0)  # 1 .. 1e4: rising from the first step
    assert centres == [100.0, pytest.approx(1.0)]
    assert result.centre_lr == pytest.approx(1.0)
    assert result.lr_at_min_loss == pytest.approx(0.1, rel=0.1)


def test_lr_find_moves_at_most_twice(monkeypatch):
    centres = fake_sweeps(monkeypatch, edge=1e3)
    result = lr_find("w.py:w", TrainConfig(), 1e-6)  # three sweeps, all below the edge
    assert centres == [1e-6, pytest.approx(1e-4), pytest.approx(1e-2)]
    assert result.lrs[0] == pytest.approx(1e-4)
    assert result.lrs[-1] == pytest.approx(1.0)
    assert result.stopped_early is False


def test_lr_find_result_centre_is_the_centre_of_its_curve_after_the_last_shift(monkeypatch):
    fake_sweeps(monkeypatch, edge=1e3)
    result = lr_find("w.py:w", TrainConfig(), 1e-6)
    assert result.centre_lr == pytest.approx(math.sqrt(result.lrs[0] * result.lrs[-1]))


def test_lr_find_sweep_blowing_up_at_once_moves_down_a_span(monkeypatch):
    centres = fake_sweeps(monkeypatch, power=8.0)  # from 1 upwards the loss is past 4x its best by step 2
    result = lr_find("w.py:w", TrainConfig(), 100.0)
    assert centres == [100.0, pytest.approx(1.0)]
    assert result.lr_at_min_loss == pytest.approx(0.1, rel=0.1)


# --- the sweep itself, run in this process on the quadratic (no trial process) ---------------------------


def _sweep_here(min_lr: float, max_lr: float, steps: int) -> tuple[list[str], dict]:
    spec = workload_spec("workload", "quadratic.py")
    job = TrialJob(
        workload=spec,
        config=TrainConfig(batch_size=8, max_lr=0.01).to_dict(),
        lr_sweep={"min_lr": min_lr, "max_lr": max_lr, "steps": steps},
    )
    events: list[dict] = []
    run_lr_sweep(job, load_workload(spec), events.append)
    curve = next(event for event in events if event["event"] == "lr_curve")
    return [event["event"] for event in events], curve


def test_run_lr_sweep_steps_the_lr_geometrically_to_the_end():
    events, curve = _sweep_here(1e-5, 1e-3, 20)
    assert events == ["started", "lr_curve", "done"]
    assert curve["stopped_early"] is False
    assert len(curve["lrs"]) == len(curve["losses"]) == len(curve["smoothed"]) == 20
    assert curve["lrs"] == pytest.approx([1e-5 * 100 ** (i / 19) for i in range(20)])
    assert curve["lrs"][0] == pytest.approx(1e-5)
    assert curve["lrs"][-1] == pytest.approx(1e-3)


def test_run_lr_sweep_smoothed_loss_is_the_bias_corrected_moving_average():
    _, curve = _sweep_here(1e-5, 1e-3, 20)
    losses, smoothed = curve["losses"], curve["smoothed"]
    average = 0.0
    for index, loss in enumerate(losses):
        average = 0.98 * average + 0.02 * loss
        assert smoothed[index] == pytest.approx(average / (1 - 0.98 ** (index + 1)))
    assert smoothed[0] == pytest.approx(losses[0])


def test_run_lr_sweep_stops_once_the_average_exceeds_four_times_its_best():
    _, curve = _sweep_here(1e-2, 10.0, 40)  # SGD on the quadratic diverges above lr 0.2
    smoothed = curve["smoothed"]
    assert curve["stopped_early"] is True
    assert len(smoothed) < 40
    assert smoothed[-1] > 4 * min(smoothed)
    assert all(value <= 4 * min(smoothed[: index + 1]) for index, value in enumerate(smoothed[:-1]))
    assert curve["lrs"][-1] > 0.2


# --- the closed-form check: SGD on a noisy quadratic is stable below 2 / lambda_max -------------------


@pytest.fixture(scope="module")
def quadratic():
    """The range test on tests/workloads/quadratic.py from two centres; the second starts two decades low."""
    module_spec = importlib.util.spec_from_file_location("_quadratic_workload", WORKLOADS / "quadratic.py")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)

    spec = workload_spec("workload", "quadratic.py")
    config = TrainConfig(batch_size=8, max_lr=0.01)
    results = {centre: lr_find(spec, config, centre) for centre in (0.01, 0.0001)}
    return {"limit": module.STABLE_LIMIT, "results": results}


def test_quadratic_stable_limit_is_two_over_the_largest_curvature(quadratic):
    assert quadratic["limit"] == pytest.approx(0.2)


@pytest.mark.parametrize("centre", [0.01, 0.0001])
def test_lr_find_on_quadratic_suggests_below_the_stable_limit(quadratic, centre):
    result, limit = quadratic["results"][centre], quadratic["limit"]
    assert limit / 10 < result.suggestion < limit
    assert result.suggestion <= result.lr_at_min_loss / 4 + 1e-12
    assert result.suggestion >= result.lr_at_min_loss / 10 - 1e-12


@pytest.mark.parametrize("centre", [0.01, 0.0001])
def test_lr_find_on_quadratic_stops_when_the_loss_blows_up(quadratic, centre):
    result = quadratic["results"][centre]
    assert result.stopped_early is True
    assert result.lrs[-1] > quadratic["limit"]  # it ran past the edge before stopping
    assert len(result.lrs) < 100


def test_lr_find_on_quadratic_from_low_centre_moves_up_a_span(quadratic):
    low, high = quadratic["results"][0.0001], quadratic["results"][0.01]
    assert low.centre_lr == pytest.approx(0.01)
    assert low.lrs[0] == pytest.approx(1e-4)
    assert low.lrs == pytest.approx(high.lrs)


def test_lr_find_on_quadratic_records_the_curve(quadratic):
    result = quadratic["results"][0.01]
    assert result.config == TrainConfig(batch_size=8, max_lr=0.01).to_dict()
    assert len(result.losses) == len(result.lrs)
    assert len(result.smoothed) in (len(result.lrs), len(result.lrs) - 1)
    assert result.lrs == sorted(result.lrs)
    assert result.lrs[0] == pytest.approx(0.01 / 100)


def test_plot_writes_a_png(quadratic, tmp_path):
    path = plot(quadratic["results"][0.01], tmp_path / "curves" / "lr.png")
    assert path == tmp_path / "curves" / "lr.png"
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > 10_000


# --- lr_find_for_trial on a finished study ------------------------------------------------------------


@pytest.fixture(scope="module")
def tested_study(tmp_path_factory):
    """A finished study of tiny (its baseline only) and the range test of its best trial."""
    folder = tmp_path_factory.mktemp("lr_find")
    storage = f"sqlite:///{folder / 'studies' / 'lr.db'}"
    search(SearchOptions(workload=workload_spec(), storage=storage, n_trials=1, measure=FAST, seed=0, lr_find=False))
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert "lr_find" not in study.user_attrs
    result = lr_find_for_trial(study)
    return {"storage": storage, "result": result}


def _reloaded(tested_study):
    return optuna.load_study(study_name="tiny", storage=tested_study["storage"])


def test_lr_find_for_trial_stores_the_result_with_the_study(tested_study):
    result = tested_study["result"]
    study = _reloaded(tested_study)
    assert result.trial == 0
    assert study.user_attrs["lr_find"] == {"0": result.to_json()}
    assert result.config == study.trials[0].user_attrs["config"]
    assert result.centre_lr in (0.01, 0.01 * 100, 0.01 / 100)  # the baseline's max_lr, or a span away
    assert result.suggestion > 0


def test_stored_result_matches_same_effective_batch_and_precision(tested_study):
    study = _reloaded(tested_study)
    config = study.trials[0].user_attrs["config"]
    assert stored_result(study, config) == tested_study["result"]
    same_effective = {**config, "batch_size": 4, "accumulation_steps": 2, "num_workers": 2}  # 4 x 2 == 8
    assert stored_result(study, same_effective) == tested_study["result"]


def test_stored_result_not_for_another_precision(tested_study):
    study = _reloaded(tested_study)
    config = study.trials[0].user_attrs["config"]
    assert stored_result(study, {**config, "precision": "bf16"}) is None


def test_stored_result_not_for_another_effective_batch(tested_study):
    study = _reloaded(tested_study)
    config = study.trials[0].user_attrs["config"]
    assert stored_result(study, {**config, "batch_size": 16}) is None
    assert stored_result(study, {**config, "accumulation_steps": 2}) is None


def test_export_best_takes_the_range_tests_max_lr_only_once_a_recipe_check_kept_it(tested_study):
    result = tested_study["result"]
    study = _reloaded(tested_study)
    assert result.max_lr != 0.01
    export = export_best("tiny", tested_study["storage"])
    assert export.config.max_lr == 0.01  # the recipe's: no recipe check has run on the range test's rate
    assert export.explanation[-1] == (
        f"max_lr 0.01, the recipe's: the LR range test's {result.max_lr:.3g} is not exported, as no recipe check "
        "ran on it"
    )
    section = export.document["lr_find"]
    assert {key: section[key] for key in ("trial", "suggestion", "lr_at_min_loss", "lr_steepest", "rule")} == {
        "trial": 0,
        "suggestion": result.suggestion,
        "lr_at_min_loss": result.lr_at_min_loss,
        "lr_steepest": result.lr_steepest,
        "rule": "min(lr_at_min_loss / 4, lr_steepest), at least lr_at_min_loss / 10",
    }
    assert section["check"]["kept"] == result.check["kept"]
    assert section["check"]["scaled_base_lr"] == 0.01  # the same effective batch as the baseline
    assert len(section["check"]["suggested_losses"]) == CHECK_STEPS
    assert section["exported_max_lr"] == 0.01

    trial = study.trials[0]
    check = recipe_check.run_check(
        _records.read_setup(study),
        trial,
        trial,
        result.max_lr,
        Budgets.from_json(_records.read_setup(study).budgets),
    )
    assert check.kept, check.reason
    recipe_check.store(study, check)
    try:
        export = export_best("tiny", tested_study["storage"])
    finally:
        study.set_user_attr(f"recipe_check.0@{result.max_lr:.6g}", None)  # Optuna deletes no user attribute
    assert export.config.max_lr == result.max_lr
    assert export.document["one_cycle"]["max_lr"] == result.max_lr
    assert export.document["lr_find"]["exported_max_lr"] == result.max_lr
    assert export.explanation[-1] == f"max_lr {result.max_lr:.3g}, checked against the recipe: {check.reason}"


def test_lr_find_for_trial_checks_the_suggestion_against_the_scaled_base_lr(tested_study):
    check = tested_study["result"].check
    assert check["suggested_lr"] == tested_study["result"].suggestion
    assert check["scaled_base_lr"] == 0.01
    assert len(check["suggested_losses"]) == len(check["scaled_base_losses"]) == CHECK_STEPS
    assert check["kept"] is (
        check["suggested_loss"] is not None
        and (check["scaled_base_loss"] is None or check["suggested_loss"] <= check["scaled_base_loss"])
    )


def test_check_suggestion_rejects_a_rate_that_diverges():
    check = check_suggestion(QUADRATIC, TrainConfig(batch_size=8), STABLE_LIMIT * 3, 0.01, steps=20)
    assert check.kept is False
    assert check.suggested_loss is None
    assert check.reason == f"max_lr {STABLE_LIMIT * 3:.3g} diverged in 20 steps of the exported schedule"


def test_check_suggestion_keeps_a_stable_rate_that_ends_lower():
    check = check_suggestion(QUADRATIC, TrainConfig(batch_size=8), STABLE_LIMIT / 2, 0.001, steps=20)
    assert check.kept is True
    assert check.suggested_loss < check.scaled_base_loss
    assert check.reason.startswith(f"max_lr {STABLE_LIMIT / 2:.3g} ended at loss")


def test_check_suggestion_rejects_a_rate_that_ends_worse():
    # Both stable, but the lower rate learns more slowly: as the suggestion it loses to the base.
    check = check_suggestion(QUADRATIC, TrainConfig(batch_size=8), 0.001, STABLE_LIMIT / 2, steps=20)
    assert check.kept is False
    assert "worse than" in check.reason


def test_export_best_exports_the_scaled_base_lr_when_the_check_rejects_the_suggestion(tested_study):
    study = _reloaded(tested_study)
    stored = dict(study.user_attrs["lr_find"])
    data = dict(stored["0"])
    data["check"] = {**data["check"], "kept": False, "reason": "max_lr 9 diverged in 40 steps of the exported schedule"}
    study.set_user_attr("lr_find", {"0": data})
    try:
        export = export_best("tiny", tested_study["storage"])
    finally:
        study.set_user_attr("lr_find", stored)
    assert export.config.max_lr == 0.01
    assert export.document["lr_find"]["check"]["kept"] is False
    assert export.explanation[-1] == "max_lr 0.01, the recipe's"


def test_lr_find_for_trial_unknown_trial_is_a_study_error(tested_study):
    study = _reloaded(tested_study)
    with pytest.raises(StudyError) as caught:
        lr_find_for_trial(study, 999)
    assert str(caught.value) == "study 'tiny' has no trial #999 with a config"
