"""The machine's curves fitted from trials: memory against batch (a line), throughput against batch
(rising to a ceiling), and the trials they keep from running."""

from __future__ import annotations

import optuna
import pytest

from autotune.study import _curves
from autotune.study._budget import Budgets
from autotune.study._figures import memory_figure, throughput_figure

MIB = 2**20
CONFIG = {
    "batch_size": 8,
    "accumulation_steps": 1,
    "num_workers": 0,
    "precision": "fp32",
    "channels_last": False,
    "compile": "off",
    "max_lr": 1e-3,
}


def _trial(
    number: int,
    batch: int,
    *,
    peak_mib: float | None = None,
    rate: float | None = None,
    status: str = "ok",
    skipped: bool = False,
    **knobs,
) -> optuna.trial.FrozenTrial:
    trial = optuna.trial.create_trial(
        value=1.0,
        user_attrs={
            "config": {**CONFIG, "batch_size": batch, **knobs},
            "status": status,
            "skipped": skipped,
            "peak_memory_bytes": int(peak_mib * MIB) if peak_mib is not None else None,
            "samples_per_second": rate,
            "unit_per_second": rate,
        },
    )
    trial.number = number
    return trial


def _saturating(batch: float) -> float:
    return 1000.0 * batch / (16 + batch)  # ceiling 1000/s, half of it at batch 16


def test_memory_line_fits_peak_against_batch_and_predicts_a_batch_over_the_limit():
    trials = [
        _trial(0, 8, peak_mib=300 + 2 * 8),
        _trial(1, 32, peak_mib=300 + 2 * 32),
        _trial(2, 64, peak_mib=300 + 2 * 64),
    ]
    fit = _curves.memory_fit(trials, {**CONFIG, "batch_size": 512})
    assert fit["bytes_per_sample"] == pytest.approx(2 * MIB)
    assert fit["intercept_bytes"] == pytest.approx(300 * MIB)
    assert fit["trials"] == [0, 1, 2]
    limit = 1000 * MIB  # 300 + 2 x batch crosses it at batch 350
    assert _curves.predicted_out_of_memory(fit, {**CONFIG, "batch_size": 256}, limit) is None
    assert _curves.predicted_out_of_memory(fit, {**CONFIG, "batch_size": 360}, limit) is None  # inside the margin
    fit, peak = _curves.predicted_out_of_memory(fit, {**CONFIG, "batch_size": 512}, limit)
    assert peak == pytest.approx((300 + 2 * 512) * MIB)


def test_memory_line_uses_only_trials_with_the_same_memory_relevant_knobs_that_ran():
    trials = [
        _trial(0, 8, peak_mib=316),
        _trial(1, 32, peak_mib=364, accumulation_steps=4),  # accumulation: neutral
        _trial(2, 64, peak_mib=900, precision="bf16"),  # another group
        _trial(3, 128, peak_mib=5000, status="oom"),
        _trial(4, 96, peak_mib=5000, skipped=True),
    ]
    fit = _curves.memory_fit(trials, CONFIG)
    assert fit["trials"] == [0, 1]
    assert _curves.memory_fit(trials[:1], CONFIG) is None  # one batch size: no line
    assert _curves.predicted_out_of_memory(fit, CONFIG, None) is None  # no limit: nothing predicted out
    assert _curves.predicted_out_of_memory(None, CONFIG, 1) is None  # no line: nothing predicted out


def test_throughput_fit_finds_the_ceiling_and_the_knee():
    trials = [_trial(i, batch, rate=_saturating(batch)) for i, batch in enumerate((4, 16, 64, 128))]
    fit = _curves.throughput_fit(trials, CONFIG)
    assert fit["ceiling_per_second"] == pytest.approx(1000.0)
    assert fit["half_batch"] == pytest.approx(16.0)
    assert fit["knee_batch"] == pytest.approx(16.0 * 19)  # 95% of the ceiling
    assert _curves.predicted_rate(fit, 16) == pytest.approx(500.0)
    assert _curves.past_the_knee(fit, {**CONFIG, "batch_size": 512}) is None  # under 2x the knee
    assert _curves.past_the_knee(fit, {**CONFIG, "batch_size": 1024})["knee_batch"] == pytest.approx(304)
    assert _curves.past_the_knee(None, {**CONFIG, "batch_size": 1024}) is None


def test_throughput_that_keeps_growing_has_no_knee_and_two_batches_no_fit():
    linear = [_trial(i, batch, rate=10.0 * batch) for i, batch in enumerate((4, 16, 64))]
    assert _curves.throughput_fit(linear, CONFIG) is None  # no ceiling in sight
    assert _curves.throughput_fit(linear[:2], CONFIG) is None


def test_fitted_curves_are_drawn_in_the_study_figures():
    trials = [
        _trial(i, batch, peak_mib=300 + 2 * batch, rate=_saturating(batch)) for i, batch in enumerate((4, 16, 64))
    ]
    last = _trial(3, 128, peak_mib=556, rate=_saturating(128))
    last.user_attrs.update(_curves.fitted_curves(trials, last.user_attrs["config"]))
    assert last.user_attrs["memory_fit"]["predicted_peak_bytes"] == pytest.approx(556 * MIB)
    assert last.user_attrs["throughput_fit"]["predicted_per_second"] == pytest.approx(_saturating(128))
    memory = memory_figure([*trials, last], Budgets(memory_budget_bytes=1000 * MIB))
    [curve] = memory.curves
    assert curve.x[0] == 4 and curve.x[-1] == pytest.approx(128)
    assert curve.y[-1] == pytest.approx(556)
    [curve] = throughput_figure([*trials, last]).curves
    assert curve.y[0] == pytest.approx(_saturating(4))
