"""The machine's curves, fitted from the trials measured so far: peak memory against batch size (a
line, as DeepSpeed's autotuner models it), and throughput against batch size (rising to a ceiling).

Both are fitted per group of trials that share every other knob that changes them, and only from
trials that ran (skipped ones are predictions, not measurements). The search uses them before it
starts a trial: a batch whose predicted peak is above the memory limit, or one far past the point
where throughput stops growing, is recorded with the prediction instead of being run.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

from autotune.store._records import MEMORY_NEUTRAL_KNOBS, TrialRecord, rate

# A prediction must clear the limit by this much before a trial is not run: the line is fitted to
# few points, and a trial that would have fitted is a loss.
MEMORY_MARGIN = 0.05
# Throughput within this share of its ceiling is saturated; the knee is the batch where it gets there.
SATURATION = 0.95
# Batches above this multiple of the knee are not run: the fit predicts under 2.5% to gain.
PAST_KNEE = 2.0
# Knobs that change neither peak memory nor throughput per sample: the same as memory's.
_RATE_NEUTRAL_KNOBS = MEMORY_NEUTRAL_KNOBS


def _group(trials: Iterable[Any], config: dict[str, Any], neutral: tuple[str, ...]) -> list[Any]:
    """Trials that ran fine with ``config``'s knobs, the ``neutral`` ones aside."""
    group = []
    for trial in trials:
        attrs = TrialRecord.of(trial)
        earlier = attrs.config
        if attrs.status != "ok" or attrs.skipped or not earlier:
            continue
        if all(earlier.get(name) == value for name, value in config.items() if name not in neutral):
            group.append(trial)
    return group


def memory_fit(trials: Iterable[Any], config: dict[str, Any]) -> dict[str, Any] | None:
    """Peak memory = intercept + slope x batch_size, least squares over the trials that ran with
    ``config``'s memory-relevant knobs; None below two distinct batch sizes or without growth."""
    points = [
        (record.config["batch_size"], record.peak_memory_bytes, t.number)
        for t in _group(trials, config, MEMORY_NEUTRAL_KNOBS)
        if (record := TrialRecord.of(t)).peak_memory_bytes is not None
    ]
    if len({batch for batch, _, _ in points}) < 2:
        return None
    slope, intercept = statistics.linear_regression([float(b) for b, _, _ in points], [float(p) for _, p, _ in points])
    if slope <= 0:
        return None
    return {
        "intercept_bytes": intercept,
        "bytes_per_sample": slope,
        "batch_sizes": sorted({batch for batch, _, _ in points}),
        "trials": sorted(number for _, _, number in points),
    }


def predicted_peak(fit: dict[str, Any], batch_size: float) -> float:
    return fit["intercept_bytes"] + fit["bytes_per_sample"] * batch_size


def predicted_out_of_memory(
    fit: dict[str, Any] | None, config: dict[str, Any], limit_bytes: int | None
) -> tuple[dict[str, Any], float] | None:
    """The memory line ``fit`` (memory_fit's, for ``config``'s group) and the peak it predicts for
    ``config``, when that peak is above the limit (by more than the margin): ``config`` is not
    worth running."""
    if limit_bytes is None or fit is None:
        return None
    peak = predicted_peak(fit, config["batch_size"])
    return (fit, peak) if peak > limit_bytes * (1 + MEMORY_MARGIN) else None


def throughput_fit(trials: Iterable[Any], config: dict[str, Any]) -> dict[str, Any] | None:
    """rate = ceiling x batch / (half + batch), fitted (as 1/rate against 1/batch, a line) over the
    trials that ran with ``config``'s other knobs; None below three distinct batch sizes, or where
    throughput does not level off (then there is no knee)."""
    points = [
        (TrialRecord.of(t).config["batch_size"], rate(t), t.number)
        for t in _group(trials, config, _RATE_NEUTRAL_KNOBS)
        if rate(t) > 0
    ]
    if len({batch for batch, _, _ in points}) < 3:
        return None
    slope, intercept = statistics.linear_regression([1.0 / b for b, _, _ in points], [1.0 / r for _, r, _ in points])
    if intercept <= 0 or slope <= 0:
        return None
    ceiling = 1.0 / intercept
    if ceiling > 10 * max(r for _, r, _ in points):  # still nearly linear: no ceiling in sight
        return None
    half = slope * ceiling  # the batch at half the ceiling
    return {
        "ceiling_per_second": ceiling,
        "half_batch": half,
        "knee_batch": half * SATURATION / (1 - SATURATION),
        "batch_sizes": sorted({batch for batch, _, _ in points}),
        "trials": sorted(number for _, _, number in points),
    }


def predicted_rate(fit: dict[str, Any], batch_size: float) -> float:
    return fit["ceiling_per_second"] * batch_size / (fit["half_batch"] + batch_size)


def past_the_knee(fit: dict[str, Any] | None, config: dict[str, Any]) -> dict[str, Any] | None:
    """The throughput curve ``fit`` (throughput_fit's, for ``config``'s group), when ``config``'s
    batch is far past its knee and larger than every batch measured (a prediction outside the
    measured range that only says "no faster")."""
    if fit is None:
        return None
    batch = config["batch_size"]
    if batch > PAST_KNEE * fit["knee_batch"] and batch > max(fit["batch_sizes"]):
        return fit
    return None


def fitted_curves(trials: Iterable[Any], config: dict[str, Any]) -> dict[str, Any]:
    """Both curves for ``config``'s group, as stored with each trial (absent where not fitted)."""
    trials = list(trials)
    curves: dict[str, Any] = {}
    memory = memory_fit(trials, config)
    if memory is not None:
        curves["memory_fit"] = {**memory, "predicted_peak_bytes": predicted_peak(memory, config["batch_size"])}
    speed = throughput_fit(trials, config)
    if speed is not None:
        curves["throughput_fit"] = {**speed, "predicted_per_second": predicted_rate(speed, config["batch_size"])}
    return curves
