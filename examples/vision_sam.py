"""A CIFAR-style CNN trained with SAM and SWA on a OneCycle schedule, compile as a searched knob.

SAM (sharpness-aware minimisation) steps twice per batch: its optimizer's step takes a closure
that runs forward and backward again at the perturbed weights (``step_closure=True``). SWA keeps
a running average of the weights (torch.optim.swa_utils.AveragedModel), updated after every
optimizer step (``after_step``). Both costs are part of what each trial measures. Every trial and
the full run use OneCycle with max_lr as its peak, which also cycles SGD's momentum. The space
searches torch.compile (``off`` or ``default``): on a CPU, compiling costs tens of seconds, so it
pays only when the full run is long enough. Unit: images.

    autotune search --workload examples/vision_sam.py:workload --trials 6 --timeout 90s
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from autotune import Workload

SPACE = str(Path(__file__).with_name("vision_sam.yaml"))
NUM_CLASSES = 10
IMAGE_SIZE = 32


class SAM(torch.optim.Optimizer):
    """Sharpness-Aware Minimization (Foret et al., 2021) around a base optimizer: climb to the
    worst weights within ``rho`` (first step), take the base step with the gradient found there."""

    def __init__(self, params: Any, base_optimizer: type[torch.optim.Optimizer], rho: float = 0.05, **kwargs: Any):
        super().__init__(params, dict(rho=rho, **kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self.param_groups = self.base_optimizer.param_groups  # one set of groups: schedulers move both
        self.defaults.update(self.base_optimizer.defaults)

    @torch.no_grad()
    def _climb(self) -> None:
        grads = [p.grad.norm(p=2) for group in self.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.norm(torch.stack(grads), p=2)
        for group in self.param_groups:
            scale = group["rho"] / (norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                step = p.grad * scale
                self.state[p]["climb"] = step
                p.add_(step)

    @torch.no_grad()
    def _descend(self) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if "climb" in self.state[p]:
                    p.sub_(self.state[p].pop("climb"))  # back to the weights the gradient is applied to
        self.base_optimizer.step()

    def step(self, closure: Any = None) -> Any:
        if closure is None:
            raise RuntimeError("SAM needs a closure that re-evaluates the loss (Workload.step_closure=True)")
        self._climb()
        loss = closure()  # forward and backward at the perturbed weights
        self._descend()
        return loss


class SWA:
    """Stochastic weight averaging after every optimizer step (the averaged model is kept here).
    Before using ``averaged`` for inference, recompute its BatchNorm statistics with
    torch.optim.swa_utils.update_bn."""

    def __init__(self) -> None:
        self.averaged: torch.optim.swa_utils.AveragedModel | None = None

    def __call__(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        if self.averaged is None:
            self.averaged = torch.optim.swa_utils.AveragedModel(model)
        self.averaged.update_parameters(model)


class ClassPatterns(torch.utils.data.Dataset):
    """``size`` 32x32 images: the class's fixed pattern plus noise, randomly cropped (4-pixel
    padding) and flipped on every read, as the usual CIFAR augmentation."""

    def __init__(self, size: int = 8192, seed: int = 0) -> None:
        self.size = size
        self.seed = seed
        self.patterns = torch.randn(NUM_CLASSES, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(7))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        label = index % NUM_CLASSES
        image = self.patterns[label] + torch.randn(3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        padded = F.pad(image, (4, 4, 4, 4), mode="reflect")
        top, left = torch.randint(0, 9, (2,), generator=generator).tolist()
        image = padded[:, top : top + IMAGE_SIZE, left : left + IMAGE_SIZE]
        if torch.rand((), generator=generator) < 0.5:
            image = image.flip(-1)
        return image.contiguous(), label


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet8(nn.Module):
    """A stem and three residual stages (16, 32, 64 channels), global pooling, a linear head."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stages = nn.Sequential(
            ResidualBlock(width, width),
            ResidualBlock(width, 2 * width, stride=2),
            ResidualBlock(2 * width, 4 * width, stride=2),
        )
        self.head = nn.Linear(4 * width, NUM_CLASSES)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(images)).mean(dim=(2, 3)))


def classification_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    images, labels = batch
    return F.cross_entropy(model(images), labels, label_smoothing=0.1)


def workload() -> Workload:
    return Workload(
        model=ResNet8,
        dataset=ClassPatterns,
        loss=classification_loss,
        optimizer=lambda params, lr: SAM(
            params, torch.optim.SGD, rho=0.05, lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True
        ),
        step_closure=True,
        after_step=SWA(),
        base_lr=0.05,
        baseline={"batch_size": 32},
        epochs=20,
        unit="images",
        space=SPACE,
    )
