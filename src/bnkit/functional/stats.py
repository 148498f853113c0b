"""Per-channel statistics of a batch, the unbiased correction, and the running-average update
(formulas in :mod:`bnkit.functional`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "batch_stats",
    "channel_dims",
    "ema",
    "moments",
    "per_channel",
    "unbiased",
    "values_per_channel",
]


def values_per_channel(x: Tensor) -> int:
    """How many values each channel's batch statistics are computed from (``numel / C``)."""
    n = 1
    for i, size in enumerate(x.shape):
        if i != 1:
            n *= size
    return n


def channel_dims(x: Tensor) -> list[int]:
    """The dimensions statistics reduce over: all but the channel dimension 1."""
    return [d for d in range(x.dim()) if d != 1]


def per_channel(v: Tensor, x: Tensor) -> Tensor:
    """A per-channel vector shaped to broadcast against ``x`` (``(1, C, 1, ...)``)."""
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


def batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel batch mean and biased variance of ``x`` (BatchNorm's kernel, no graph).

    Half-precision inputs give float32 statistics, as BatchNorm accumulates them.
    """
    with torch.no_grad():
        mean, var = torch.batch_norm_update_stats(x, None, None, 0.0)
    return mean, var


def moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of ``x``, differentiable (two passes)."""
    dims = channel_dims(x)
    mean = x.mean(dims)
    var = (x - per_channel(mean, x)).square().mean(dims)
    return mean, var


def unbiased(var: Tensor, n: int | Tensor) -> Tensor:
    """The unbiased variance ``var · n/(n−1)`` from a biased one over ``n`` values.

    ``n`` may be a tensor of counts broadcasting against ``var``; one value gives ``inf``.
    """
    if isinstance(n, Tensor):
        return var * n / (n - 1)
    return var * (n / (n - 1) if n > 1 else math.inf)


def ema(running: Tensor, new: Tensor, factor: float | Tensor, *, inplace: bool = False) -> Tensor:
    """``(1 − f)·running + f·new``: one update of a running statistic with factor ``f``.

    With ``inplace=True`` ``running`` is overwritten and returned.
    """
    if inplace:
        return running.mul_(1 - factor).add_(factor * new)
    return running * (1 - factor) + factor * new
