"""A job whose time goes into data loading: large photos decoded and augmented per sample, a small model.

Each sample stands in for a 128x128 photo: a source image drawn and blurred at full size, then
cropped, resized to 32x32 and jittered (the demo's augmentation). The model is the demo's CNN at
width 8, so a training step costs less than loading its batch: DataLoader workers and their
prefetch are what change the speed. Used by benchmarks/suite.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from autotune.workload import Workload, demo
from autotune.workload.demo import NUM_CLASSES, SmallCNN, augment

SOURCE_SIZE = 128
_BLUR = torch.ones(3, 1, 5, 5) / 25


class Photos(torch.utils.data.Dataset):
    """``size`` synthetic photos of ``NUM_CLASSES`` classes, decoded on every read."""

    def __init__(self, size: int = 8192, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.size = size
        self.seed = seed
        self.patterns = torch.randn(NUM_CLASSES, 3, 8, 8, generator=generator)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        label = index % NUM_CLASSES
        # "Decoding": the class pattern upsampled to the photo's size, noise, a 5x5 blur.
        image = F.interpolate(self.patterns[label].unsqueeze(0), size=(SOURCE_SIZE, SOURCE_SIZE), mode="bilinear")
        image = image + 0.8 * torch.randn(1, 3, SOURCE_SIZE, SOURCE_SIZE, generator=generator)
        image = F.conv2d(F.pad(image, (2, 2, 2, 2), mode="reflect"), _BLUR, groups=3)[0]
        return augment(image[:, :96, :96], generator), label


def workload() -> Workload:
    """The demo's job (its loss, optimizer, space and unit) on these photos, with a narrower CNN."""
    return dataclasses.replace(
        demo.workload(),
        model=lambda: SmallCNN(width=8),
        dataset=Photos,
        baseline={"batch_size": 32, "num_workers": 0, "precision": "fp32"},
    )
