"""Multi-task sequence model in plain PyTorch: one Transformer encoder, two heads, two losses summed.

Each sample is a sequence of event ids (a session, a sensor log); one head classifies the
sequence (cross-entropy), the other regresses a number from it (smooth L1), and the training
loss is their weighted sum. The model carries its own gradient checkpointing (each encoder layer
recomputed in the backward pass), which autotune turns on through the workload's hook.
Unit: sequences.

    autotune search --workload examples/multitask.py:workload --trials 8 --timeout 60s
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from autotune import Workload

SPACE = str(Path(__file__).with_name("multitask.yaml"))
VOCAB = 512
SEQUENCE_LENGTH = 64
NUM_CLASSES = 6
REGRESSION_WEIGHT = 0.5


class Sessions(torch.utils.data.Dataset):
    """``size`` sequences of ``SEQUENCE_LENGTH`` event ids. The class is which of six event groups
    dominates the sequence; the regression target is the mean value of the events seen."""

    def __init__(self, size: int = 50_000, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, NUM_CLASSES, (size,), generator=generator)
        dominant = self.labels[:, None] * (VOCAB // NUM_CLASSES) + torch.randint(
            0, VOCAB // NUM_CLASSES, (size, SEQUENCE_LENGTH), generator=generator
        )
        background = torch.randint(0, VOCAB, (size, SEQUENCE_LENGTH), generator=generator)
        self.events = torch.where(torch.rand(size, SEQUENCE_LENGTH, generator=generator) < 0.4, dominant, background)
        value = torch.linspace(-1, 1, VOCAB)
        self.targets = value[self.events].mean(dim=1) * 4

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"events": self.events[index], "label": self.labels[index], "target": self.targets[index]}


class MultiTaskEncoder(nn.Module):
    """Embeddings, a stack of Transformer encoder layers, mean pooling, a classification head and a
    regression head."""

    def __init__(self, width: int = 96, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.position = nn.Parameter(torch.zeros(SEQUENCE_LENGTH, width))
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                width, heads, dim_feedforward=4 * width, dropout=0.1, batch_first=True, norm_first=True
            )
            for _ in range(layers)
        )
        self.norm = nn.LayerNorm(width)
        self.classify = nn.Linear(width, NUM_CLASSES)
        self.regress = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, 1))
        self.checkpointing = False

    def forward(self, events: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.embed(events) + self.position
        for layer in self.layers:
            if self.checkpointing and self.training:
                hidden = checkpoint(layer, hidden, use_reentrant=False)  # recomputed in backward
            else:
                hidden = layer(hidden)
        pooled = self.norm(hidden).mean(dim=1)
        return self.classify(pooled), self.regress(pooled).squeeze(-1)


def enable_checkpointing(model: MultiTaskEncoder) -> None:
    model.checkpointing = True


def multitask_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Classification cross-entropy plus the weighted regression loss: one scalar, one backward."""
    logits, value = model(batch["events"])
    classification = F.cross_entropy(logits.float(), batch["label"])
    regression = F.smooth_l1_loss(value.float(), batch["target"])
    return classification + REGRESSION_WEIGHT * regression


def workload() -> Workload:
    return Workload(
        model=MultiTaskEncoder,
        dataset=Sessions,
        loss=multitask_loss,
        base_lr=3e-4,
        baseline={"batch_size": 32},
        epochs=10,
        unit="sequences",
        gradient_checkpointing=enable_checkpointing,
        space=SPACE,
    )
