"""Small models for the diagnostics tests: a clean one, and a fingerprint of model state."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def cnn(bias: bool = False) -> nn.Sequential:
    """conv → BN → ReLU → conv → BN → ReLU → pool → linear → BN1d."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=bias),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=bias),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 6, bias=bias),
        nn.BatchNorm1d(6),
    )


def batch(n: int = 32, seed: int = 1, shift: float = 0.0, scale: float = 1.0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g) * scale + shift


def calibrated(model: nn.Module, batches: int = 8) -> nn.Module:
    """Running statistics of the data :func:`batch` draws (cumulative average), in train()."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(batches):
            model(batch(64, seed=100 + i))
    for m in bns:
        m.momentum = 0.1
    return model


def clean() -> nn.Sequential:
    """A model every rule must stay silent on (in train and in eval)."""
    torch.manual_seed(0)
    model = calibrated(cnn())
    assert isinstance(model, nn.Sequential)
    return model


def no_decay_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """SGD with weight decay everywhere but on the BatchNorm parameters."""
    norm = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for p in m.parameters()
    }
    return torch.optim.SGD(
        [
            {"params": [p for p in model.parameters() if id(p) not in norm]},
            {"params": [p for p in model.parameters() if id(p) in norm], "weight_decay": 0.0},
        ],
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
    )


def fingerprint(model: nn.Module) -> dict[str, Any]:
    """Everything a diagnostic must leave alone, comparable with :func:`same`."""
    out: dict[str, Any] = {}
    for name, m in model.named_modules():
        out[f"module {name}"] = (
            type(m),
            m.training,
            len(m._forward_hooks),
            len(m._forward_pre_hooks),
            sorted(k for k in vars(m) if k.startswith("_bnkit")),
        )
        for key, p in m._parameters.items():
            out[f"param {name}.{key}"] = (
                None
                if p is None
                else (
                    id(p),
                    p.detach().clone(),
                    p.requires_grad,
                    None if p.grad is None else (id(p.grad), p.grad.clone()),
                    p._version,
                )
            )
        for key, b in m._buffers.items():
            out[f"buffer {name}.{key}"] = None if b is None else (id(b), b.clone())
    return out


def same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and bool(
                ((a == b) | (a.isnan() & b.isnan())).all()
                if a.is_floating_point()
                else (a == b).all()
            )
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before.keys() == after.keys()
    for key in before:
        assert same(before[key], after[key]), f"{key} changed"


def trained(seed: int = 0) -> nn.Sequential:
    """A calibrated model whose gamma/beta vary across channels, as after training."""
    model = clean()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)
    return model


def weight_only_average() -> nn.Sequential:
    """A freshly built copy that an average of the parameters only was written into."""
    averaged = cnn()
    with torch.no_grad():
        for mine, theirs in zip(averaged.parameters(), trained().parameters(), strict=True):
            mine.copy_(theirs)
    return averaged


class Checkpointed(nn.Module):
    """:func:`cnn` whose first two blocks run under activation checkpointing."""

    def __init__(self, reentrant: bool) -> None:
        super().__init__()
        self.body = clean()
        self.reentrant = reentrant

    def forward(self, x: Tensor) -> Tensor:
        x = checkpoint(self.body[:6], x, use_reentrant=self.reentrant)
        out: Tensor = self.body[6:](x)
        return out
