"""The built-in demo workload: a small CNN on a synthetic, learnable image task.

Each sample is its class's fixed pattern plus noise, passed through a CPU-side
augmentation (random crop with padding, flip, brightness jitter), so batch size,
DataLoader workers and precision all change its speed, on a laptop CPU too.
``autotune search`` runs it when no ``--workload`` is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from autotune.workload._workload import Workload

NUM_CLASSES = 10
IMAGE_SIZE = 32
SOURCE_SIZE = 96
_BLUR = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]).div(16).expand(3, 1, 3, 3).contiguous()


class PatternImages(torch.utils.data.Dataset):
    """``size`` noisy images of ``NUM_CLASSES`` class patterns, decoded and augmented on every read."""

    def __init__(self, size: int = 16384, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.size = size
        self.seed = seed
        self.patterns = torch.randn(NUM_CLASSES, 3, SOURCE_SIZE, SOURCE_SIZE, generator=generator)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        label = index % NUM_CLASSES
        # Stands in for decoding a photo: a full-size source image.
        image = self.patterns[label] + 0.8 * torch.randn(3, SOURCE_SIZE, SOURCE_SIZE, generator=generator)
        return augment(image, generator), label


def augment(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random resized crop (antialiased), flip, blur and brightness jitter: CPU work per sample."""
    scale = 0.6 + 0.4 * torch.rand((), generator=generator).item()
    crop = int(SOURCE_SIZE * scale)
    top, left = torch.randint(0, SOURCE_SIZE - crop + 1, (2,), generator=generator).tolist()
    image = image[:, top : top + crop, left : left + crop].unsqueeze(0)
    image = F.interpolate(image, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", antialias=True, align_corners=False)
    if torch.rand((), generator=generator) < 0.5:
        image = image.flip(-1)
    image = F.conv2d(F.pad(image, (1, 1, 1, 1), mode="reflect"), _BLUR, groups=3)
    return image.squeeze(0) * (1 + 0.2 * (torch.rand((), generator=generator) - 0.5))


class SmallCNN(nn.Module):
    """Three conv blocks and a linear head; supports gradient checkpointing like HF models."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            [
                _block(3, width),
                _block(width, 2 * width, pool=True),
                _block(2 * width, 4 * width, pool=True),
            ]
        )
        self.head = nn.Linear(4 * width, NUM_CLASSES)
        self.gradient_checkpointing = False

    def gradient_checkpointing_enable(self) -> None:
        self.gradient_checkpointing = True

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        hidden = images
        for block in self.blocks:
            if self.gradient_checkpointing and self.training:
                hidden = checkpoint(block, hidden, use_reentrant=False)
            else:
                hidden = block(hidden)
        return self.head(hidden.mean(dim=(2, 3)))


def _block(in_channels: int, out_channels: int, pool: bool = False) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


def classification_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    images, labels = batch
    return F.cross_entropy(model(images), labels)


def workload() -> Workload:
    return Workload(
        model=SmallCNN,
        dataset=PatternImages,
        loss=classification_loss,
        optimizer=lambda params, lr: torch.optim.AdamW(params, lr=lr),
        base_lr=1e-3,
        baseline={"batch_size": 8, "num_workers": 0, "precision": "fp32"},
        epochs=5,
        unit="images",
        space="demo",
    )
