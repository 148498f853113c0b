"""The study's network: a small ResNet-style CNN with an injectable normalization layer.

``stem`` (3×3 conv) → three residual stages of one basic block each (widths ``w``, ``2w``,
``4w``; the second and third halve the resolution) → global average pooling → linear. With
``norm="bn"`` every normalization is ``nn.BatchNorm2d`` (9 layers); with ``norm="gn"`` the same
network uses ``nn.GroupNorm`` with groups of 4 channels: the twin without batch statistics that
the study uses as its control.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn
from torch import Tensor

__all__ = ["NORMS", "ResNetSmall", "build_model", "norm_layer"]

NORMS = ("bn", "gn")
"""The normalization layers the network can be built with."""

_GROUP_CHANNELS = 4


def norm_layer(kind: str) -> Callable[[int], nn.Module]:
    """A factory ``channels -> layer`` for ``kind`` ("bn" or "gn")."""
    if kind == "bn":
        return nn.BatchNorm2d
    if kind == "gn":
        return lambda c: nn.GroupNorm(max(1, c // _GROUP_CHANNELS), c)
    raise ValueError(f"norm must be one of {NORMS} (got {kind!r})")


class _Block(nn.Module):
    """Two 3×3 convolutions with normalization, plus a (projected) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int, norm: Callable[[int], nn.Module]):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = norm(cout)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        result: Tensor = self.act(out + self.shortcut(x))
        return result


class ResNetSmall(nn.Module):
    """The study's classifier: input (N, C, H, W) in [0, 1], output logits (N, classes).

    Args:
        in_channels: image channels (1 for the digits).
        num_classes: number of classes.
        width: channels of the first stage (the others have 2× and 4×).
        norm: "bn" (BatchNorm2d) or "gn" (GroupNorm, 4 channels per group).
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 10, width: int = 16, norm: str = "bn"
    ) -> None:
        super().__init__()
        make = norm_layer(norm)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), make(width), nn.ReLU(inplace=True)
        )
        self.stage1 = _Block(width, width, 1, make)
        self.stage2 = _Block(width, 2 * width, 2, make)
        self.stage3 = _Block(2 * width, 4 * width, 2, make)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        result: Tensor = self.head(self.pool(x).flatten(1))
        return result


def build_model(
    norm: str, *, in_channels: int = 1, num_classes: int = 10, width: int = 16
) -> nn.Module:
    """A freshly initialized :class:`ResNetSmall` (initialized from the global torch RNG)."""
    return ResNetSmall(in_channels, num_classes, width, norm)
