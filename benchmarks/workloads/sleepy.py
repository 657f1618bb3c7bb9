"""A workload whose step sleeps: a trial takes wall time without using the CPU.

For ``benchmarks/workers.py``: with every trial waiting rather than computing, a 2-core machine
running 8 workers shows what the storage (and the search's own bookkeeping) can take, not how
the workers share the cores.
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from torch import nn

from autotune import Workload

STEP_SECONDS = 0.1

# One intra-op thread for a model of ten weights: a pool of two threads, woken after each sleep, spends
# about 9 ms of CPU a step spinning (measured on 2 cores), which would make the trials compute after all.
torch.set_num_threads(1)


class Points(torch.utils.data.Dataset):
    def __init__(self, size: int = 8192) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(size, 4, generator=generator)
        self.y = (self.x.sum(dim=1) > 0).long()

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        return self.x[index], self.y[index]


def _loss(model, batch):
    time.sleep(STEP_SECONDS)
    x, y = batch
    return F.cross_entropy(model(x), y)


def workload() -> Workload:
    return Workload(
        model=lambda: nn.Linear(4, 2),
        dataset=Points,
        loss=_loss,
        base_lr=1e-2,
        baseline={"batch_size": 8},
        epochs=1,
    )
