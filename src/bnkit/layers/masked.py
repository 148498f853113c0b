"""Padded sequences: statistics over the valid positions only (inside ``bnkit.mask``).

For an ``(N, C, L)`` input and a mask ``(N, L)``, True where a position is valid, every policy
computes its batch statistics over the valid positions (all ranks' when synchronized), folds
those into the running statistics, and normalizes every position with them, so padded
positions stay finite and never move a statistic. Ghost batches split the sequences as usual,
each group with the statistics of its valid positions; prior mixing counts sequences.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit import functional as BF
from bnkit.errors import InputError
from bnkit.layers.state import ManagedState, Plan
from bnkit.layers.sync import Exchange, global_moments
from bnkit.layers.update import Update, renorm_limits, running
from bnkit.policy import Normalize

__all__ = ["run"]

Affine = tuple[Tensor | None, Tensor | None]


def run(
    layer: _BatchNorm,
    state: ManagedState,
    plan: Plan,
    x: Tensor,
    affine: Affine,
    ex: Exchange | None,
) -> Tensor:
    """One forward of a managed layer over the valid positions of a padded batch."""
    mask = _check(layer, state, x)
    mode = plan.mode
    uses_batch = mode is not Normalize.RUNNING and not (
        mode is Normalize.PRIOR and math.isinf(state.policy.prior_strength)
    )
    if mode is Normalize.GHOST:
        return _ghost(layer, state, plan, x, affine, mask)
    if not uses_batch and not plan.update:
        mean, var = running(layer, state)
        return _normalize(x, mask, mean, var, *affine, layer.eps)
    batch_mean, batch_var, n, samples = _moments(x, mask, ex)
    if n <= 1 and uses_batch:
        raise InputError(
            f"layer {state.label(layer)!r} needs more than 1 valid value per channel for batch "
            f"statistics (got {n} valid positions of input shape {tuple(x.shape)})"
        )
    run_mean, run_var = running(layer, state) if mode is not Normalize.BATCH else (None, None)
    if run_mean is not None and run_var is not None and plan.update:
        run_mean, run_var = BF.snapshot(run_mean), BF.snapshot(run_var)
    weight, bias = affine
    if mode is Normalize.BATCH or (mode is Normalize.PRIOR and state.policy.prior_strength == 0):
        mean, var = batch_mean, batch_var
    elif mode is Normalize.RENORM:
        assert run_mean is not None and run_var is not None
        limits = renorm_limits(layer, state)
        r, d = BF.renorm_correction(batch_mean, batch_var, run_mean, run_var, layer.eps, *limits)
        weight, bias = BF.renorm_fold(weight, bias, r, d)
        mean, var = batch_mean, batch_var
    elif mode is Normalize.PRIOR and uses_batch:
        assert run_mean is not None and run_var is not None
        w = BF.prior_weight(state.policy.prior_strength, samples)
        mean, var = BF.prior_mix(w, run_mean, run_var, batch_mean, batch_var)
    else:  # running statistics (those from before this batch's update)
        assert run_mean is not None and run_var is not None
        mean, var = run_mean, run_var
    out = _normalize(x, mask, mean, var, weight, bias, layer.eps)
    if plan.update and n > 1:
        update = Update(layer, state, plan)
        update.fold(batch_mean, batch_var, n)
        update.commit()
    return out


def _normalize(
    x: Tensor,
    mask: Tensor,
    mean: Tensor,
    var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """Normalize every position; padded ones with the statistics and gamma/beta detached, so
    whatever gradient reaches them never flows into the valid positions or gamma/beta."""
    out = BF.affine_normalize(x, mean, var, weight, bias, eps)
    w = None if weight is None else weight.detach()
    b = None if bias is None else bias.detach()
    padded = BF.affine_normalize(x, mean.detach(), var.detach(), w, b, eps)
    return torch.where(mask[:, None, :], out, padded).to(x.dtype)


def _check(layer: _BatchNorm, state: ManagedState, x: Tensor) -> Tensor:
    mask = state.mask
    assert mask is not None
    if x.dim() != 3 or tuple(mask.shape) != (x.shape[0], x.shape[2]):
        raise InputError(
            f"layer {state.label(layer)!r}: a mask of shape {tuple(mask.shape)} needs an "
            f"(N, C, L) input with the same N and L (got input shape {tuple(x.shape)}); "
            "bnkit.mask applies to BatchNorm1d layers on padded sequences"
        )
    if mask.device != x.device:
        mask = mask.to(x.device)
    return mask


def _moments(x: Tensor, mask: Tensor, ex: Exchange | None) -> tuple[Tensor, Tensor, int, int]:
    if ex is not None:
        return global_moments(x, ex, mask)
    mean, var, n = BF.masked_moments(x, mask)
    return mean, var, int(n), x.shape[0]


def _ghost(
    layer: _BatchNorm, state: ManagedState, plan: Plan, x: Tensor, affine: Affine, mask: Tensor
) -> Tensor:
    sizes = BF.ghost_sizes(x.shape[0], state.policy.ghost_size)
    outs, means, variances, counts = [], [], [], []
    for xs, ms in zip(torch.split(x, sizes), torch.split(mask, sizes), strict=True):
        mean, var, n = BF.masked_moments(xs, ms)
        if int(n) <= 1:
            raise InputError(
                f"layer {state.label(layer)!r} needs more than 1 valid value per channel in "
                f"every ghost batch (a group of {xs.shape[0]} sequences has {int(n)})"
            )
        outs.append(_normalize(xs, ms, mean, var, *affine, layer.eps))
        means.append(mean)
        variances.append(var)
        counts.append(int(n))
    if plan.update:
        mean, unbiased = BF.ghost_update_stats(torch.stack(means), torch.stack(variances), counts)
        update = Update(layer, state, plan)
        update.fold_within(mean, unbiased, sum(counts))
        update.commit()
    return torch.cat(outs, dim=0)
