"""The gradient noise scale, and what it says about a larger batch (McCandlish et al., 2018, "An
Empirical Model of Large-Batch Training"; AdaptDL's estimator and AdaScale's gain).

The noise scale ``B_noise = tr(Sigma) / |G|^2`` is the batch (in samples) at which the noise of a
minibatch gradient is as large as the gradient itself. Below it a larger batch buys almost as
much progress per sample; above it each sample buys less. Reaching the same progress at batch
``B`` as at the recipe's ``B0`` takes, by the empirical model,

    samples(B) = samples(B0) x (1 + B / B_noise) / (1 + B0 / B_noise)

and one step at ``B`` makes as much progress as ``gain = (1 + B_noise / B0) / (1 + B_noise / B)``
steps at ``B0`` (AdaScale's gain, the factor the learning rate follows).

It is measured from gradient norms alone: the gradients of ``m`` micro-batches of ``b`` samples
each (their squared norms, summed by a hook as backward runs) and their mean (the accumulated
gradient, a batch of ``m x b``) give, per group of micro-batches, unbiased estimates of |G|^2 and
tr(Sigma):

    |G|^2    = (m |g_big|^2 - mean |g_small|^2) / (m - 1)
    tr(Sigma) = (mean |g_small|^2 - |g_big|^2) x m b / (m - 1)

The noise scale is their ratio of means over the groups (a ratio of noisy means, as McCandlish et
al. advise, rather than a mean of noisy ratios), with a jackknife standard error. A trial measures
it after its timed windows, in steps of its own config that do not step the optimizer, so neither
its throughput nor the run it measured is touched; with one micro-batch per step, two are taken
(the difference of consecutive steps, AdaptDL's way, would need a copy of every gradient).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from autotune.store._records import TrialRecord, as_record

if TYPE_CHECKING:
    import torch

    from autotune.training._apply import Training

MIN_GROUPS = 4  # groups of micro-batches a measurement takes at least, however long they last
MAX_GROUPS = 200


@dataclasses.dataclass(frozen=True)
class NoiseScale:
    """An estimate of the gradient noise scale, in samples, with its standard error."""

    value: float | None  # None: no gradient signal above the noise was found (|G|^2 not above 0)
    stderr: float | None
    groups: int
    gradient_sq: float  # mean estimate of |G|^2 over the groups
    trace: float  # mean estimate of tr(Sigma), per sample

    def describe(self) -> str:
        if self.value is None:
            return f"not resolved ({self.groups} groups of micro-batches: no gradient signal above the noise)"
        spread = f" ± {self.stderr:.3g}" if self.stderr is not None else ""
        return f"{self.value:.3g}{spread} samples ({self.groups} groups of micro-batches)"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def group_estimates(small_sq: float, big_sq: float, micro_batch: int, count: int) -> tuple[float, float]:
    """(|G|^2, tr(Sigma)) from one group: the mean squared norm of ``count`` micro-batch gradients of
    ``micro_batch`` samples each, and the squared norm of their mean."""
    if count < 2:
        raise ValueError(f"a group needs at least 2 micro-batches, got {count}")
    gradient_sq = (count * big_sq - small_sq) / (count - 1)
    trace = (small_sq - big_sq) * count * micro_batch / (count - 1)
    return gradient_sq, trace


def estimate(gradient_sq: Sequence[float], trace: Sequence[float]) -> NoiseScale:
    """The noise scale over groups: mean tr(Sigma) over mean |G|^2, with a jackknife standard error."""
    n = len(gradient_sq)
    if n != len(trace) or n == 0:
        raise ValueError("estimate needs as many |G|^2 as tr(Sigma) values, at least one")
    total_g, total_s = math.fsum(gradient_sq), math.fsum(trace)
    mean_g, mean_s = total_g / n, total_s / n
    if mean_g <= 0:
        return NoiseScale(value=None, stderr=None, groups=n, gradient_sq=mean_g, trace=mean_s)
    value = max(0.0, mean_s / mean_g)
    stderr = None
    if n >= 3:
        leave_one_out = [
            (total_s - s) / (total_g - g) for g, s in zip(gradient_sq, trace, strict=True) if total_g - g > 0
        ]
        if len(leave_one_out) == n:
            mean = math.fsum(leave_one_out) / n
            stderr = math.sqrt((n - 1) / n * math.fsum((v - mean) ** 2 for v in leave_one_out))
    return NoiseScale(value=value, stderr=stderr, groups=n, gradient_sq=mean_g, trace=mean_s)


def from_attrs(attrs: TrialRecord | Mapping[str, Any]) -> NoiseScale | None:
    """A trial's own estimate, from its record or user attributes (None where it measured none)."""
    noise = as_record(attrs).noise
    if not noise or not noise.get("gradient_sq"):
        return None
    return estimate(noise["gradient_sq"], noise["trace"])


def pooled(trials: Iterable[Any]) -> NoiseScale | None:
    """The study's estimate: every group measured by its trials (a trial or its user attributes),
    pooled into one ratio of means."""
    gradient_sq: list[float] = []
    trace: list[float] = []
    for trial in trials:
        noise = as_record(trial).noise or {}
        gradient_sq += noise.get("gradient_sq") or []
        trace += noise.get("trace") or []
    return estimate(gradient_sq, trace) if gradient_sq else None


def samples_factor(batch: int, baseline_batch: int, noise_scale: float | None) -> float:
    """How many times the recipe's samples a run at effective batch ``batch`` needs to reach the
    recipe's progress (at ``baseline_batch``): (1 + B / B_noise) / (1 + B0 / B_noise).

    With the noise scale unknown, the bound that never favours a change: a larger batch makes no
    more progress per step than the recipe's (B / B0 the samples), a smaller one no more per sample."""
    if batch == baseline_batch:
        return 1.0
    if noise_scale is None or not noise_scale > 0:
        return max(1.0, batch / baseline_batch)
    if math.isinf(noise_scale):
        return 1.0
    return (1 + batch / noise_scale) / (1 + baseline_batch / noise_scale)


def gain(batch: int, baseline_batch: int, noise_scale: float | None) -> float:
    """AdaScale's gain: the recipe's steps one step at ``batch`` is worth, (1 + B_noise / B0) /
    (1 + B_noise / B); equal to batch / samples_factor. The learning rate follows it."""
    return (batch / baseline_batch) / samples_factor(batch, baseline_batch, noise_scale)


def measure(
    training: Training, seconds: float, *, min_groups: int = MIN_GROUPS, max_groups: int = MAX_GROUPS
) -> dict[str, Any]:
    """The noise scale of ``training``'s gradients where its run stands, over groups of micro-batches
    of its config (``accumulation_steps`` of them, at least 2), for about ``seconds``.

    Each group zeroes the gradients, runs forward and backward over its micro-batches exactly as a
    step does (autocast, loss scaling) and reads the norms; the optimizer does not step. Returns the
    per-group estimates and the estimate, as a trial records them (user attribute ``noise``)."""
    import torch

    step, config = training.train_step, training.config
    count = max(2, config.accumulation_steps)
    parameters = _trainable_parameters(training)
    device = parameters[0].device
    small = torch.zeros((), dtype=torch.float64, device=device)  # this group's sum of micro-batch norms^2
    running = torch.zeros((), dtype=torch.float64, device=device)  # the micro-batch in flight

    def add(grad: torch.Tensor) -> None:
        running.add_(grad.detach().pow(2).sum(dtype=torch.float64))

    def micro_batch_done() -> None:
        small.add_(running)
        running.zero_()

    handles = [p.register_hook(add) for p in parameters]
    gradient_sq: list[float] = []
    trace: list[float] = []
    skipped = 0
    began = time.perf_counter()
    try:
        while len(gradient_sq) + skipped < max_groups and (
            len(gradient_sq) + skipped < min_groups or time.perf_counter() - began < seconds
        ):
            small.zero_()
            running.zero_()
            step.accumulate(training.batches, count, after_backward=micro_batch_done)
            small_sq, big_sq = _norms_sq(small, parameters, step.scaler, count)
            if not (math.isfinite(small_sq) and math.isfinite(big_sq)):
                skipped += 1  # an overflowed fp16 step: the GradScaler would skip it too
                continue
            g, s = group_estimates(small_sq, big_sq, config.batch_size, count)
            gradient_sq.append(float(f"{g:.6g}"))  # six digits: the record stays small, the estimate unchanged
            trace.append(float(f"{s:.6g}"))
    finally:
        for handle in handles:
            handle.remove()
        training.optimizer.zero_grad(set_to_none=True)
    return _measurement(config.batch_size, count, gradient_sq, trace, skipped, began)


def _trainable_parameters(training: Training) -> list[torch.nn.Parameter]:
    """The optimizer's parameters that require grad; an optimizer with none is refused."""
    parameters = [p for group in training.optimizer.param_groups for p in group["params"] if p.requires_grad]
    if not parameters:
        raise ValueError("the optimizer has no parameters that require grad")
    return parameters


def _norms_sq(
    small: torch.Tensor, parameters: list[torch.nn.Parameter], scaler: torch.amp.GradScaler | None, count: int
) -> tuple[float, float]:
    """A group's two squared gradient norms, unscaled: the mean of its micro-batches' and its accumulated one's."""
    import torch

    grads = [p.grad for p in parameters if p.grad is not None]
    big = torch.stack([g.detach().pow(2).sum(dtype=torch.float64) for g in grads]).sum()
    # .item(): one sync per group. The hooks saw each micro-batch's gradient divided by the
    # count (the loss is), and every gradient multiplied by the GradScaler's scale (fp16).
    scale = scaler.get_scale() if scaler is not None else 1.0
    small_sq = float(small) * count / scale**2  # mean over micro-batches of |g_i|^2: (count/scale)^2 / count
    big_sq = float(big) / scale**2
    return small_sq, big_sq


def _measurement(
    micro_batch: int, count: int, gradient_sq: list[float], trace: list[float], skipped: int, began: float
) -> dict[str, Any]:
    """The measurement as a trial records it: its groups' estimates, and the estimate over them."""
    result = estimate(gradient_sq, trace) if gradient_sq else None
    return {
        "micro_batch": micro_batch,
        "micro_batches": count,
        "groups": len(gradient_sq),
        "skipped": skipped,
        "seconds": time.perf_counter() - began,
        "gradient_sq": gradient_sq,
        "trace": trace,
        "value": None if result is None else result.value,
        "stderr": None if result is None else result.stderr,
    }


__all__ = ["NoiseScale", "estimate", "from_attrs", "gain", "group_estimates", "measure", "pooled", "samples_factor"]
