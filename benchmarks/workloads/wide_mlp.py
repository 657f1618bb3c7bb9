"""A wide MLP on synthetic vectors: activation memory grows with the batch size, data costs nothing.

Used by benchmarks/cuda_check.sh to meet the CUDA memory budget for real
(``--max-memory 2GiB``: large batches raise torch.cuda.OutOfMemoryError).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autotune import Workload

FEATURES = 1024
WIDTH = 8192


class Vectors(torch.utils.data.Dataset):
    def __init__(self, size: int = 262144) -> None:
        self.size = size
        self.weights = torch.randn(FEATURES, generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        x = torch.randn(FEATURES, generator=torch.Generator().manual_seed(index))
        return x, int(x @ self.weights > 0)


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(FEATURES, WIDTH), nn.GELU(), nn.Linear(WIDTH, WIDTH), nn.GELU(), nn.Linear(WIDTH, 2))


def _loss(model, batch):
    x, y = batch
    return F.cross_entropy(model(x), y)


def workload() -> Workload:
    return Workload(model=_model, dataset=Vectors, loss=_loss, base_lr=1e-4, baseline={"batch_size": 256}, epochs=1)
