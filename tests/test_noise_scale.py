"""The gradient noise scale: its estimator against a closed form, and what it says of a larger batch."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autotune.knobs._config import TrainConfig
from autotune.training import Training
from autotune.training import _noise_scale as noise_scale
from autotune.workload import Workload

DIMENSIONS = 10
OFFSET = 0.5  # every coordinate of w - w*
NOISE = 1.0  # standard deviation of the label noise


def regression_noise_scale() -> float:
    """Linear regression, x ~ N(0, I_d), y = x.w* + eps, loss 0.5 (x.w - y)^2, at w = w* + delta:
    G = delta and Sigma = (|delta|^2 + sigma^2) I + delta delta^T (Isserlis), so
    B_noise = tr(Sigma) / |G|^2 = (d (|delta|^2 + sigma^2) + |delta|^2) / |delta|^2."""
    delta_sq = DIMENSIONS * OFFSET**2
    return (DIMENSIONS * (delta_sq + NOISE**2) + delta_sq) / delta_sq


class Regression(torch.utils.data.Dataset):
    def __init__(self, size: int = 32768) -> None:
        generator = torch.Generator().manual_seed(1)
        self.x = torch.randn(size, DIMENSIONS, generator=generator)
        self.y = self.x.sum(dim=1) + NOISE * torch.randn(size, generator=generator)  # w* = 1 everywhere

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return self.x[index], self.y[index]


def _model() -> nn.Module:
    model = nn.Linear(DIMENSIONS, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0 + OFFSET)  # w* + delta
    return model


def _loss(model, batch):
    x, y = batch
    return 0.5 * (model(x).squeeze(-1) - y).pow(2).mean()


def _training(batch_size: int, accumulation_steps: int = 1) -> Training:
    workload = Workload(
        model=_model, dataset=Regression, loss=_loss, optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr)
    )
    torch.manual_seed(0)
    return Training(workload, TrainConfig(batch_size=batch_size, accumulation_steps=accumulation_steps), "cpu")


@pytest.mark.parametrize("batch_size, accumulation_steps", [(64, 1), (32, 4)])
def test_measure_lands_near_the_closed_form_noise_scale(batch_size, accumulation_steps):
    expected = regression_noise_scale()  # 15 samples
    training = _training(batch_size, accumulation_steps)
    weights = training.model.weight.detach().clone()
    measured = noise_scale.measure(training, seconds=0.0, min_groups=150)
    assert measured["groups"] == 150
    assert measured["micro_batches"] == max(2, accumulation_steps)
    assert abs(measured["value"] / expected - 1) < 0.25
    assert measured["stderr"] is not None and measured["stderr"] < 0.25 * expected
    # It measures where the run stands: no optimizer step, gradients cleared after.
    assert torch.equal(training.model.weight.detach(), weights)
    assert training.model.weight.grad is None


def test_estimate_is_a_ratio_of_means_with_a_jackknife_error():
    result = noise_scale.estimate([1.0, 3.0, 2.0], [10.0, 50.0, 30.0])
    assert result.value == pytest.approx(15.0)  # 90 / 6, not the mean of 10, 16.7 and 15
    leave_one_out = [80 / 5, 40 / 3, 60 / 4]
    mean = sum(leave_one_out) / 3
    assert result.stderr == pytest.approx(math.sqrt(2 / 3 * sum((v - mean) ** 2 for v in leave_one_out)))


def test_estimate_without_gradient_signal_is_unresolved():
    result = noise_scale.estimate([-1.0, 0.5], [3.0, 4.0])
    assert result.value is None
    assert "no gradient signal" in result.describe()


def test_group_estimates_are_unbiased_for_known_norms():
    # Two micro-batch gradients g1 = (3, 0) and g2 = (1, 0) of 4 samples: |mean|^2 = 4, mean |g_i|^2 = 5.
    gradient_sq, trace = noise_scale.group_estimates(5.0, 4.0, micro_batch=4, count=2)
    assert gradient_sq == pytest.approx(3.0)  # (2 x 4 - 5) / 1
    assert trace == pytest.approx(8.0)  # (5 - 4) x 2 x 4 / 1


def test_pooled_takes_every_trials_groups():
    trials = [
        {"noise": {"gradient_sq": [1.0, 3.0], "trace": [10.0, 50.0]}},
        {"noise": None},
        {"noise": {"gradient_sq": [2.0], "trace": [30.0]}},
    ]
    assert noise_scale.pooled(trials).value == pytest.approx(15.0)
    assert noise_scale.pooled([{"config": {}}]) is None


def test_samples_factor_follows_the_empirical_model():
    # B_noise 100: from 10 to 100 samples per step needs (1 + 1) / (1 + 0.1) of the samples.
    assert noise_scale.samples_factor(100, 10, 100.0) == pytest.approx(2 / 1.1)
    assert noise_scale.samples_factor(10, 10, None) == 1.0
    # Unknown noise scale: never in favour of a change.
    assert noise_scale.samples_factor(40, 10, None) == 4.0
    assert noise_scale.samples_factor(5, 10, None) == 1.0


def test_gain_is_adascales():
    # (1 + B_noise / B0) / (1 + B_noise / B): linear far below the noise scale, flat far above it.
    assert noise_scale.gain(100, 10, 100.0) == pytest.approx((1 + 10) / (1 + 1))
    assert noise_scale.gain(20, 10, 1e9) == pytest.approx(2.0)
    assert noise_scale.gain(10_000, 10, 1.0) == pytest.approx(1.1, rel=1e-3)
