"""The forward of a managed layer: its plan picks the statistics, :mod:`bnkit.functional` computes.

One function per kind of statistics (batch, running, renorm, ghost, prior); each normalizes and
hands what the plan says to fold into the running statistics to an
:class:`~bnkit.layers.update.Update`. Inputs with a mask (padded sequences) take
:mod:`bnkit.layers.masked` instead; a recomputed forward (activation checkpointing) replays the
statistics the first one read and updates nothing.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit import functional as BF
from bnkit.layers import masked
from bnkit.layers.inputs import check_input
from bnkit.layers.probe import ACTIVE, mark
from bnkit.layers.recompute import recomputing, replay
from bnkit.layers.state import ATTR, ManagedState, Plan
from bnkit.layers.sync import Exchange, exchange_for, global_moments
from bnkit.layers.update import Update, renorm_limits, running
from bnkit.policy import Normalize

__all__ = ["run"]

Affine = tuple[Tensor | None, Tensor | None]
Peers = Exchange | None
"""The other ranks to share batch statistics with (None: this rank alone)."""


def run(layer: _BatchNorm, x: Tensor, dims: tuple[int, int] | None) -> Tensor:
    """One forward of a managed layer (``dims``: its input ranks; None: its own check)."""
    state: ManagedState = vars(layer)[ATTR]
    plan = state.train if layer.training else state.eval
    ex = exchange_for(layer, state.sync, state.label(layer))
    check_input(layer, state, plan, x, dims, ex is not None)
    if ACTIVE:
        mark(layer)
    weight: Tensor | None = layer.weight
    bias: Tensor | None = layer.bias
    if plan.frozen_affine:
        weight = None if weight is None else weight.detach()
        bias = None if bias is None else bias.detach()
    if not recomputing():
        return _dispatch(layer, state, plan, x, (weight, bias), ex)
    # The same ops as the first forward (checkpointing compares what they save), on the
    # statistics it read; its update goes to scratch copies (see Update).
    with replay(layer, plan.mode is not Normalize.BATCH):
        return _dispatch(layer, state, plan, x, (weight, bias), ex)


def _dispatch(
    layer: _BatchNorm, state: ManagedState, plan: Plan, x: Tensor, affine: Affine, ex: Peers
) -> Tensor:
    if state.mask is not None:
        return masked.run(layer, state, plan, x, affine, ex)
    mode = plan.mode
    if mode is Normalize.BATCH:
        return _batch(layer, state, plan, x, affine, ex)
    if x.numel() == 0 and ex is None:
        return _empty(layer, plan, x, affine)
    if mode is Normalize.RUNNING:
        return _running(layer, state, plan, x, affine, ex)
    if mode is Normalize.RENORM:
        return _renorm(layer, state, plan, x, affine, ex)
    if mode is Normalize.GHOST:
        return _ghost(layer, state, plan, x, affine)
    return _prior(layer, state, plan, x, affine, ex)


def _batch(
    layer: _BatchNorm, state: ManagedState, plan: Plan, x: Tensor, affine: Affine, ex: Peers
) -> Tensor:
    """Batch statistics (over all ranks when synchronized), updating in the same kernel."""
    weight, bias = affine
    if ex is not None and x.device.type != "cuda":
        mean, var, n, _ = global_moments(x, ex)
        out = BF.affine_normalize(x, mean, var, weight, bias, layer.eps).to(x.dtype)
        if plan.update:
            update = Update(layer, state, plan)
            update.fold(mean, var, n)
            update.commit()
        return out
    if not plan.update:
        return _kernel(layer, x, weight, bias, None, None, 0.0, ex)
    update = Update(layer, state, plan)
    if update.deferred:
        out = _kernel(layer, x, weight, bias, None, None, 0.0, ex)
        update.observe(x, ex)
    elif isinstance(update.factor, Tensor):  # a cumulative factor on the device (compiled)
        out = _kernel(layer, x, weight, bias, None, None, 0.0, ex)
        BF.update_running_stats(x, update.mean, update.var, update.factor)
    else:
        out = _kernel(layer, x, weight, bias, update.mean, update.var, update.factor, ex)
    update.commit()
    return out


def _kernel(
    layer: _BatchNorm,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    factor: float,
    ex: Peers,
) -> Tensor:
    """BatchNorm's own kernel on batch statistics; PyTorch's SyncBatchNorm one across ranks."""
    if ex is None:
        return BF.normalize_with_batch(
            x, weight, bias, layer.eps, running_mean, running_var, factor
        )
    from torch.nn.modules._functions import SyncBatchNorm as _SyncFn

    out: Tensor = _SyncFn.apply(  # type: ignore[no-untyped-call]
        x, weight, bias, running_mean, running_var, layer.eps, factor, ex.group,
        dist.get_world_size(ex.group),
    )  # fmt: skip
    return out


def _empty(layer: _BatchNorm, plan: Plan, x: Tensor, affine: Affine) -> Tensor:
    """An empty batch: an empty output, the statistics untouched, counted as BatchNorm does."""
    mean, var = layer.running_mean, layer.running_var
    if mean is None or var is None:
        out = BF.normalize_with_batch(x, *affine, layer.eps)
    else:
        out = BF.normalize(x, mean, var, *affine, layer.eps)
    nbt = layer.num_batches_tracked
    if plan.update and nbt is not None and not recomputing():
        nbt.add_(1)
    return out


def _running(
    layer: _BatchNorm, state: ManagedState, plan: Plan, x: Tensor, affine: Affine, ex: Peers
) -> Tensor:
    """Running statistics; an update uses the batch but the output the statistics from before."""
    mean, var = running(layer, state)
    if not plan.update:
        return BF.normalize(x, mean, var, *affine, layer.eps)
    used_mean, used_var = BF.snapshot(mean), BF.snapshot(var)
    update = Update(layer, state, plan)
    if update.deferred:
        update.observe(x, ex)
    elif ex is not None:
        with torch.no_grad():
            batch_mean, batch_var, n, _ = global_moments(x.detach(), ex)
        update.fold(batch_mean, batch_var, n)
    else:
        BF.update_running_stats(x, update.mean, update.var, update.factor)
    update.commit()
    return BF.normalize(x, used_mean, used_var, *affine, layer.eps)


def _renorm(
    layer: _BatchNorm, state: ManagedState, plan: Plan, x: Tensor, affine: Affine, ex: Peers
) -> Tensor:
    """Batch renormalization: batch statistics corrected toward the running ones."""
    p = state.policy
    if p.r_max == 1 and p.d_max == 0:  # no correction ever: plain BatchNorm, bit for bit
        return _batch(layer, state, plan, x, affine, ex)
    mean, var = running(layer, state)
    if plan.update:  # the update below must not change what r and d are computed from
        mean, var = BF.snapshot(mean), BF.snapshot(var)
    r_limit, d_limit = renorm_limits(layer, state)
    if ex is None:  # one statistics pass (updating in it), one normalizing pass
        update = Update(layer, state, plan) if plan.update else None
        if update is None or update.deferred:
            batch_mean, batch_var = BF.batch_stats(x)
            if update is not None:
                update.fold(batch_mean, batch_var, BF.values_per_channel(x))
        else:
            batch_mean, batch_var = BF.update_running_stats(
                x, update.mean, update.var, update.factor
            )
        r, d = BF.renorm_correction(batch_mean, batch_var, mean, var, layer.eps, r_limit, d_limit)
        weight, bias = BF.renorm_fold(*affine, r, d)
        out = BF.normalize_on_stats(x, weight, bias, batch_mean, batch_var, layer.eps)
        if update is not None:
            update.commit()
        return out
    batch_mean, batch_var, n, _ = global_moments(x, ex)
    r, d = BF.renorm_correction(batch_mean, batch_var, mean, var, layer.eps, r_limit, d_limit)
    weight, bias = BF.renorm_fold(*affine, r, d)
    out = BF.affine_normalize(x, batch_mean, batch_var, weight, bias, layer.eps).to(x.dtype)
    if plan.update:
        update = Update(layer, state, plan)
        update.fold(batch_mean, batch_var, n)
        update.commit()
    return out


def _ghost(layer: _BatchNorm, state: ManagedState, plan: Plan, x: Tensor, affine: Affine) -> Tensor:
    """Ghost batches (always per rank); one group is plain batch statistics, bit for bit."""
    sizes = BF.ghost_sizes(x.shape[0], state.policy.ghost_size)
    if len(sizes) == 1:
        return _batch(layer, state, plan, x, affine, None)
    out, means, variances = BF.ghost_normalize(x, *affine, layer.eps, sizes)
    if plan.update:
        per_sample = BF.values_per_channel(x) // x.shape[0]
        update = Update(layer, state, plan)
        mean, var = BF.ghost_update_stats(means, variances, [s * per_sample for s in sizes])
        update.fold_within(mean, var, BF.values_per_channel(x))
        update.commit()
    return out


def _prior(
    layer: _BatchNorm, state: ManagedState, plan: Plan, x: Tensor, affine: Affine, ex: Peers
) -> Tensor:
    """Running statistics mixed with the batch's (over all ranks when synchronized)."""
    strength = state.policy.prior_strength
    if strength == 0:
        return _batch(layer, state, plan, x, affine, ex)
    if math.isinf(strength):
        return _running(layer, state, plan, x, affine, ex)
    running_mean, running_var = running(layer, state)
    if plan.update:
        running_mean, running_var = BF.snapshot(running_mean), BF.snapshot(running_var)
    if ex is not None or _composite():
        # Differentiable statistics: the exchange needs them, compiled graphs fuse them, and
        # torch.func transforms need plain ops (the eager fast path is a custom function).
        if ex is not None:
            batch_mean, batch_var, n, samples = global_moments(x, ex)
        else:
            (batch_mean, batch_var), n, samples = BF.moments(x), BF.values_per_channel(x), len(x)
        w = BF.prior_weight(strength, samples)
        mean, var = BF.prior_mix(w, running_mean, running_var, batch_mean, batch_var)
        out = BF.affine_normalize(x, mean, var, *affine, layer.eps).to(x.dtype)
    else:
        n, w = BF.values_per_channel(x), BF.prior_weight(strength, x.shape[0])
        out, batch_mean, batch_var = BF.mixed_normalize(
            x, *affine, running_mean, running_var, w, layer.eps
        )
    if plan.update:
        update = Update(layer, state, plan)
        update.fold(batch_mean, batch_var, n)
        update.commit()
    return out


def _composite() -> bool:
    """Whether to use plain differentiable ops instead of bnkit's autograd functions."""
    return torch.compiler.is_compiling() or BF.transformed()
