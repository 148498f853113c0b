"""Model factories for the ``bnkit inspect`` tests (importable from the repository root)."""

from __future__ import annotations

import sys

import torch
import torch.nn as nn


def clean() -> nn.Module:
    """A small CNN with running statistics that look trained, in train()."""
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5, bias=False),
        nn.BatchNorm1d(5),
    )
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_var.fill_(0.5)
            m.running_mean.fill_(0.1)
            m.num_batches_tracked.fill_(10)
    return model


def fresh() -> nn.Module:
    """The same CNN as it comes out of its constructor (never-updated statistics)."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5, bias=False),
        nn.BatchNorm1d(5),
    )


def broken() -> nn.Module:
    """Raises, as a factory with a bug would."""
    raise RuntimeError("factory bug\nsecond line")


def not_a_model() -> int:
    return 3


class Builders:
    """Factories reachable through a dotted attribute path."""

    @staticmethod
    def clean() -> nn.Module:
        return clean()


def on_meta() -> nn.Module:
    """Built on the meta device: shapes without values."""
    with torch.device("meta"):
        return clean()


def exits() -> nn.Module:
    """Calls sys.exit(0) instead of returning a model."""
    sys.exit(0)
