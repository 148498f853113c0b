"""Small models and data for the statistics and conversion tests."""

from __future__ import annotations

import torch
import torch.nn as nn
from tests.helpers import randomize
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm


def small_cnn(seed: int = 0) -> nn.Sequential:
    """conv-BN-ReLU-conv-BN-ReLU-pool-linear-BN1d with non-trivial BN state."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.BatchNorm2d(5),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 4),
        nn.BatchNorm1d(4),
    )
    for i, m in enumerate(net.modules()):
        if isinstance(m, _BatchNorm):
            randomize(m, seed=i)
    return net


def batches(sizes: list[int], seed: int = 0, shape: tuple[int, ...] = (3, 8, 8)) -> list[Tensor]:
    """Batches of the given sizes from a shifted, scaled normal distribution."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn((n, *shape), generator=g) * 2.0 + 0.5 for n in sizes]


class Block(nn.Module):
    """A ResNet basic block (conv-BN-ReLU-conv-BN + shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.short(x))


def tiny_resnet(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, 1, 1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        Block(8, 8),
        Block(8, 16, 2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    for i, m in enumerate(net.modules()):
        if isinstance(m, _BatchNorm):
            randomize(m, seed=i)
    return net


def state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(
    a: dict[str, Tensor], b: dict[str, Tensor], skip: tuple[str, ...] = ()
) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if skip and key.startswith(skip):
            continue
        assert torch.equal(a[key], b[key]), key


class BNReLU(nn.BatchNorm2d):
    """A BatchNorm subclass with an activation after ``super().forward`` (kept by policies)."""

    def forward(self, input: Tensor) -> Tensor:
        return torch.relu(super().forward(input))
