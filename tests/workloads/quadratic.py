"""SGD on a noisy quadratic, whose largest stable learning rate is known: 2 / lambda_max.

Each sample is a noisy target ``x``; the loss is 0.5 * sum(lambda_i * (w_i - x_i)^2) averaged
over the batch, so the Hessian is diag(lambda) whatever the batch, and gradient descent is
stable exactly for lr < 2 / max(lambda). The noise keeps every direction excited, as minibatch
noise does in real training.
"""

from __future__ import annotations

import torch
from torch import nn

from autotune import Workload

CURVATURES = torch.tensor([0.5, 1.0, 2.0, 4.0, 10.0])  # eigenvalues of the Hessian
STABLE_LIMIT = 2 / float(CURVATURES.max())  # gradient descent diverges above this step size


class Bowl(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.full((len(CURVATURES),), 3.0))

    def forward(self, targets: torch.Tensor) -> torch.Tensor:
        return (0.5 * CURVATURES * (self.w - targets) ** 2).sum(dim=1).mean()


def targets() -> torch.utils.data.Dataset:
    return torch.utils.data.TensorDataset(
        torch.randn(4096, len(CURVATURES), generator=torch.Generator().manual_seed(0))
    )


def workload() -> Workload:
    return Workload(
        model=Bowl,
        dataset=targets,
        loss=lambda model, batch: model(batch[0]),
        optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr),
        base_lr=0.01,
        baseline={"batch_size": 8},
    )
