"""A tiny workload with knobs of its own: the sequence length of its data, its hidden width."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autotune import Workload


class Sequences(torch.utils.data.Dataset):
    def __init__(self, length: int = 8, size: int = 256) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(size, length, 4, generator=generator)
        self.y = (self.x.sum(dim=(1, 2)) > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return self.x[index], self.y[index]


class Pooled(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))

    def forward(self, x):
        return self.layers(x).mean(dim=1)


def _loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def workload() -> Workload:
    return Workload(
        model=Pooled,
        dataset=Sequences,
        loss=_loss,
        base_lr=1e-2,
        baseline={"batch_size": 8, "dataset.length": 8},
        epochs=1,
    )


def _evaluate(model) -> dict:
    data = Sequences(size=64)
    correct = (model(data.x).argmax(dim=1) == data.y).float().mean()
    return {"accuracy": correct}


def evaluated() -> Workload:
    """The same job with an evaluation every half epoch."""
    job = workload()
    job.evaluate = _evaluate
    job.evaluate_every = 0.5
    return job


def _uncompilable_model(width: int = 8):
    """The model, in a process where Inductor has no C++ compiler: torch.compile fails on it."""
    import torch._inductor.config

    torch._inductor.config.cpp.cxx = ("/nonexistent/c++",)
    return Pooled(width)


def uncompilable() -> Workload:
    job = workload()
    job.model = _uncompilable_model
    return job
