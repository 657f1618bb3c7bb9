"""A tiny workload trained the way SAM users write it: a SAM optimizer whose step takes a closure,
and SWA weight averaging after every step."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tiny import Points  # this folder is on sys.path while autotune loads a workload file from it
from torch import nn

from autotune import Workload


class SAM(torch.optim.Optimizer):
    """Sharpness-Aware Minimization (Foret et al.), as commonly implemented: ascend to the worst
    nearby weights, take the base optimizer's step with the gradient found there."""

    def __init__(self, params, base_optimizer=torch.optim.SGD, rho: float = 0.05, **kwargs) -> None:
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def first_step(self) -> None:
        norm = torch.norm(
            torch.stack([p.grad.norm(p=2) for g in self.param_groups for p in g["params"] if p.grad is not None]), p=2
        )
        for group in self.param_groups:
            scale = group["rho"] / (norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                self.state[p]["old_p"] = p.data.clone()
                p.add_(p.grad * scale)

    @torch.no_grad()
    def second_step(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.data = self.state[p]["old_p"]
        self.base_optimizer.step()

    def step(self, closure=None):
        assert closure is not None, "SAM requires a closure"
        self.first_step()
        with torch.enable_grad():
            closure()
        self.second_step()


def _loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


class SWA:
    """torch.optim.swa_utils.AveragedModel, updated after every optimizer step."""

    def __init__(self) -> None:
        self.averaged = None
        self.updates = 0

    def __call__(self, model, optimizer) -> None:
        if self.averaged is None:
            self.averaged = torch.optim.swa_utils.AveragedModel(model)
        self.averaged.update_parameters(model)
        self.updates += 1


def workload() -> Workload:
    return Workload(
        model=lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)),
        dataset=Points,
        loss=_loss,
        optimizer=lambda params, lr: SAM(params, torch.optim.SGD, lr=lr, momentum=0.9),
        step_closure=True,
        after_step=SWA(),
        base_lr=0.05,
        baseline={"batch_size": 16},
        epochs=1,
    )


def unflagged() -> Workload:
    """The same SAM run as its users write it: the optimizer asserts that it got a closure, and the
    workload does not say ``step_closure=True``."""
    return Workload(
        model=lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)),
        dataset=Points,
        loss=_loss,
        optimizer=lambda params, lr: SAM(params, torch.optim.SGD, lr=lr, momentum=0.9),
        base_lr=0.05,
        baseline={"batch_size": 16},
        epochs=1,
    )


class _Broken(torch.optim.SGD):
    def step(self, closure=None):
        raise RuntimeError("the optimizer's state is corrupt")


def broken_step() -> Workload:
    """An optimizer whose step fails with or without a closure."""
    return Workload(
        model=lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)),
        dataset=Points,
        loss=_loss,
        optimizer=lambda params, lr: _Broken(params, lr=lr),
        baseline={"batch_size": 16},
    )
