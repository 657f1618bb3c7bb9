"""A tiny token workload: sequences of 16 token ids, its throughput counted in tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from autotune import Workload

SEQUENCE_LENGTH = 16
VOCABULARY = 32


class Sequences(torch.utils.data.Dataset):
    def __init__(self, size: int = 512) -> None:
        generator = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, VOCABULARY, (size, SEQUENCE_LENGTH), generator=generator)
        self.labels = (self.ids.float().mean(dim=1) > (VOCABULARY - 1) / 2).long()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        return self.ids[index], self.labels[index]


class MeanOfEmbeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCABULARY, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, ids):
        return self.head(self.embedding(ids).mean(dim=1))


def _loss(model, batch):
    ids, labels = batch
    return F.cross_entropy(model(ids), labels)


def workload() -> Workload:
    return Workload(
        model=MeanOfEmbeddings,
        dataset=Sequences,
        loss=_loss,
        base_lr=1e-2,
        baseline={"batch_size": 8},
        epochs=2,
        count=lambda batch: int(batch[0].numel()),  # every id is a token: batch_size x 16
        unit="tokens",
    )
