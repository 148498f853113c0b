"""Batch renormalization, ghost batches and prior mixing (formulas in :mod:`bnkit.functional`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bnkit.functional import _autograd
from bnkit.functional.normalize import affine_normalize, transformed
from bnkit.functional.stats import batch_stats, moments, unbiased

__all__ = [
    "ghost_normalize",
    "ghost_sizes",
    "ghost_update_stats",
    "mixed_normalize",
    "prior_mix",
    "prior_weight",
    "renorm_correction",
    "renorm_fold",
    "renorm_limits",
]


# --------------------------------------------------------------------------- renorm
def renorm_limits(
    step: int | Tensor, r_max: float, d_max: float, warmup: int, ramp: int
) -> tuple[float | Tensor, float | Tensor]:
    """The clipping limits of batch renormalization after ``step`` updates.

    (1, 0) during the first ``warmup`` updates, then rising linearly to (``r_max``, ``d_max``)
    over ``ramp`` updates. ``step`` may be a tensor (the layer's counter, read on the device so
    that neither eager mode nor ``torch.compile`` syncs); the limits are then tensors.
    """
    if not warmup and not ramp:
        return r_max, d_max
    if isinstance(step, Tensor):
        s = step.to(torch.float64)
        t = ((s - warmup) / ramp).clamp(0.0, 1.0) if ramp else (s >= warmup).to(torch.float64)
        return 1.0 + t * (r_max - 1.0), t * d_max
    t_host = min(max((step - warmup) / ramp, 0.0), 1.0) if ramp else float(step >= warmup)
    return 1.0 + t_host * (r_max - 1.0), t_host * d_max


def renorm_correction(
    batch_mean: Tensor,
    batch_var: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    r_limit: float | Tensor,
    d_limit: float | Tensor,
) -> tuple[Tensor, Tensor]:
    """The batch renormalization factors ``r`` and ``d`` (no gradient)."""
    with torch.no_grad():
        running_std = torch.sqrt(running_var + eps)
        r_hi = torch.as_tensor(r_limit, dtype=batch_var.dtype, device=batch_var.device)
        d_hi = torch.as_tensor(d_limit, dtype=batch_var.dtype, device=batch_var.device)
        r = torch.clamp(torch.sqrt(batch_var + eps) / running_std, 1.0 / r_hi, r_hi)
        d = torch.clamp((batch_mean - running_mean) / running_std, -d_hi, d_hi)
    return r, d


def renorm_fold(
    weight: Tensor | None, bias: Tensor | None, r: Tensor, d: Tensor
) -> tuple[Tensor, Tensor]:
    """``(γ·r, γ·d + β)``: batch renormalization as a plain affine map on batch-normalized x."""
    w = r if weight is None else weight * r
    b = d if weight is None else weight * d
    return w, b if bias is None else b + bias


# --------------------------------------------------------------------------- ghost
def ghost_sizes(samples: int, ghost_size: int) -> list[int]:
    """The group sizes of ghost batches: ``torch.chunk`` into ``ceil(samples / ghost_size)``.

    >>> ghost_sizes(17, 16), ghost_sizes(40, 16), ghost_sizes(32, 16)
    ([9, 8], [14, 14, 12], [16, 16])
    """
    if samples <= ghost_size:
        return [samples]
    step = math.ceil(samples / math.ceil(samples / ghost_size))
    sizes = [step] * (samples // step)
    return [*sizes, samples % step] if samples % step else sizes


def ghost_normalize(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, sizes: list[int]
) -> tuple[Tensor, Tensor, Tensor]:
    """Normalize consecutive groups of ``sizes`` samples, each with its own batch statistics.

    Returns the output and, per group, the mean and the biased variance (shape ``(G, C)``,
    float32 for half-precision input).
    """
    if torch.compiler.is_compiling() or transformed():
        y, means, invstds = _autograd.ghost_composite(x, weight, bias, sizes, eps)
    else:
        stats: list[Tensor] = []
        y = _autograd.GhostBatchNorm.apply(x, weight, bias, sizes, eps, stats)  # type: ignore[no-untyped-call]
        means, invstds = stats
    return y, means, invstds.pow(-2) - eps


def ghost_update_stats(
    means: Tensor, variances: Tensor, counts: list[int]
) -> tuple[Tensor, Tensor]:
    """The mean and unbiased variance a ghost-batch forward folds into the running statistics:
    the means over the groups, weighted by their ``counts`` of values per channel, of their
    means and of their unbiased variances (from the biased ``variances``)."""
    n = torch.tensor(counts, dtype=means.dtype, device=means.device).unsqueeze(1)
    total = n.sum()
    return (means * n).sum(0) / total, (unbiased(variances, n) * n).sum(0) / total


# --------------------------------------------------------------------------- prior
def prior_weight(strength: float, samples: int) -> float:
    """The weight ``N / (N + n)`` of the running statistics for prior strength ``N``."""
    if math.isinf(strength):
        return 1.0
    return strength / (strength + samples) if strength + samples > 0 else 0.0


def prior_mix(
    w: float, running_mean: Tensor, running_var: Tensor, batch_mean: Tensor, batch_var: Tensor
) -> tuple[Tensor, Tensor]:
    """``w·running + (1−w)·batch`` for the mean and the (biased) variance."""
    mean = w * running_mean + (1 - w) * batch_mean
    var = w * running_var + (1 - w) * batch_var
    return mean, var


def mixed_normalize(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    w: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Normalize with :func:`prior_mix` statistics (gradients through the batch part).

    Returns the output and the batch mean and biased variance.
    """
    batch_mean, batch_var = batch_stats(x)
    mean, var = prior_mix(w, running_mean, running_var, batch_mean, batch_var)

    def composite(x: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        m, v = prior_mix(w, running_mean, running_var, *moments(x))
        return affine_normalize(x, m, v, weight, bias, eps)

    out: Tensor = _autograd.MixedNormalize.apply(  # type: ignore[no-untyped-call]
        x, weight, bias, mean, var, batch_mean, w, eps, composite
    )
    return out, batch_mean, batch_var
