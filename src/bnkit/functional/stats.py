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
    "masked_moments",
    "moments",
    "per_channel",
    "pool",
    "pool_into",
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

    Half-precision inputs give float32 statistics, as BatchNorm accumulates them. Compiled
    graphs and ``torch.func`` transforms get the same numbers from ``var_mean`` (BatchNorm's
    statistics kernel has neither a symbolic-shape implementation, so it would split graphs of
    varying batch sizes, nor a batching rule).
    """
    with torch.no_grad():
        if torch.compiler.is_compiling() or torch._C._functorch.maybe_current_level() is not None:
            acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
            var, mean = torch.var_mean(x.to(acc), channel_dims(x), correction=0)
            return mean, var
        mean, var = torch.batch_norm_update_stats(x, None, None, 0.0)
    return mean, var


def moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of ``x``, differentiable (two passes)."""
    dims = channel_dims(x)
    mean = x.mean(dims)
    var = (x - per_channel(mean, x)).square().mean(dims)
    return mean, var


def masked_moments(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel mean and biased variance of an ``(N, C, L)`` input over the positions where
    ``mask`` (``(N, L)``) is True, differentiable; returns them and the number of such values.
    """
    w = mask[:, None, :].to(x.dtype if x.is_floating_point() else torch.float32)
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    n = mask.sum().to(acc)
    xw = x.to(acc) * w
    mean = xw.sum((0, 2)) / n
    var = ((x.to(acc) - mean[None, :, None]).square() * w).sum((0, 2)) / n
    return mean, var, n


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


def pool(counts: Tensor, means: Tensor, m2s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    r"""Merge groups given by their value counts ``(G,)``, means and sums of squared deviations
    ``(G, C)``: returns the count, mean and sum of squared deviations of all of them,

    .. math::

        N = \sum_g n_g, \quad \mu = \frac{1}{N}\sum_g n_g m_g, \quad
        M_2 = \sum_g \left(M_{2,g} + n_g (m_g - \mu)^2\right)
    """
    total = counts.sum()
    mean = (counts[:, None] * means).sum(0) / total
    return total, mean, (m2s + counts[:, None] * (means - mean).square()).sum(0)


def pool_into(
    count: Tensor, mean: Tensor, m2: Tensor, n: int | Tensor, batch_mean: Tensor, batch_var: Tensor
) -> None:
    r"""Merge a batch into pooled statistics in place (Chan et al.'s update).

    With ``count`` values so far, their ``mean`` and ``m2`` (the sum of squared deviations from
    it), and a batch of :math:`n` values with mean :math:`m_b` and biased variance :math:`v_b`:

    .. math::

        N' = N + n, \quad \delta = m_b - \mu, \quad \mu' = \mu + \delta\,\frac{n}{N'}, \quad
        M_2' = M_2 + n\,v_b + \delta^2\,\frac{N n}{N'}

    so that after any number of batches ``mean`` and ``m2 / count`` are exactly the mean and
    biased variance of all their values concatenated.
    """
    n_t = torch.as_tensor(n, dtype=count.dtype, device=count.device)
    total = count + n_t
    delta = batch_mean.to(mean.dtype) - mean
    mean.add_(delta * (n_t / total))
    m2.add_(batch_var.to(m2.dtype) * n_t + delta.square() * (count * n_t / total))
    count.copy_(total)
