"""An independent float64 reference of every policy: the oracle for bnkit's tests and ``explain``.

It shares nothing with the fast path but the :class:`~bnkit.policy.Policy` value: statistics are
plain sums over the values of each channel, the normalization is written out term by term,
and the policy's axes are read directly. It is slow on purpose and differentiable (gradients
reach the input and, when the policy lets them, gamma and beta).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from bnkit.policy import Affine, Normalize, Phase, Policy, Update

__all__ = ["ReferenceStep", "reference_forward", "reference_step"]


@dataclasses.dataclass(frozen=True)
class ReferenceStep:
    """Every number of one BatchNorm forward, in float64."""

    policy: Policy
    training: bool
    input: Tensor
    n: int
    """Values per channel (``numel / C``)."""
    used: str
    """Which statistics normalized the input: ``"batch"``, ``"running"``, ``"renorm"``,
    ``"ghost"`` or ``"prior"``. For ghost batches ``mean``/``var``/``inv_std`` are the
    size-weighted averages over the groups (each group used its own; see ``details``)."""
    why: str
    batch_mean: Tensor
    batch_var: Tensor
    """Biased batch variance (what normalization uses)."""
    mean: Tensor
    var: Tensor
    """The statistics that normalized the input."""
    eps: float
    inv_std: Tensor
    normalized: Tensor
    weight: Tensor | None
    bias: Tensor | None
    output: Tensor
    updated: bool
    update_rule: str
    factor: float | None
    skipped: bool
    """True when the batch's statistics were not finite and the update was skipped."""
    running_mean: Tensor | None
    running_var: Tensor | None
    new_running_mean: Tensor | None
    new_running_var: Tensor | None
    num_batches_tracked: int | None
    new_num_batches_tracked: int | None
    affine_trainable: bool
    update_mean: Tensor
    """The mean folded into the running mean by an update."""
    update_var: Tensor
    """The unbiased variance folded into the running variance by an update."""
    details: dict[str, Any]
    """Strategy numbers: ``r, d, r_limit, d_limit`` (renorm); ``sizes, means, vars`` per ghost
    batch (ghost); ``weight, samples`` (prior)."""


def _per_channel(x: Tensor) -> Tensor:
    """(C, n) view of the values of each channel."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def _broadcast(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


def _mode(policy: Policy, training: bool) -> tuple[str, str]:
    phase = "train" if training else "eval"
    if policy.normalize is Normalize.BATCH:
        return "batch", "policy normalizes with batch statistics in every phase"
    if policy.normalize is Normalize.RUNNING:
        return "running", "policy normalizes with running statistics in every phase"
    if policy.normalize is Normalize.PRIOR:
        return "prior", "policy mixes running and batch statistics in every phase"
    if not training:
        return "running", f"policy uses running statistics in eval(), and the layer is in {phase}()"
    if policy.normalize is Normalize.PHASE:
        return "batch", "policy follows the phase, and the layer is in train()"
    what = "batch renormalization" if policy.normalize is Normalize.RENORM else "ghost batches"
    return policy.normalize.value, f"policy uses {what} in train(), and the layer is in train()"


def _renorm_limits(policy: Policy, step: int) -> tuple[float, float]:
    start, ramp = policy.renorm_warmup, policy.renorm_ramp
    if step < start:
        return 1.0, 0.0
    if ramp and step < start + ramp:
        t = (step - start) / ramp
        return 1.0 + t * (policy.r_max - 1.0), t * policy.d_max
    return policy.r_max, policy.d_max


def _stats(x64: Tensor) -> tuple[Tensor, Tensor, int]:
    values = _per_channel(x64)
    n = values.shape[1]
    mean = values.sum(dim=1) / n
    return mean, ((values - mean[:, None]) ** 2).sum(dim=1) / n, n


def reference_forward(
    policy: Policy,
    x: Tensor,
    *,
    training: bool,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    num_batches_tracked: int | None = None,
    eps: float = 1e-5,
    momentum: float | None = 0.1,
) -> ReferenceStep:
    """One forward of a BatchNorm layer with ``policy``, computed step by step in float64.

    ``momentum`` is the layer's own, used when the policy names none (None: a cumulative
    average, as ``nn.BatchNorm``'s ``momentum=None``). Nothing passed in is modified; the new
    running statistics are returned.
    """
    x64 = x.double()
    batch_mean, batch_var, n = _stats(x64)
    mode, why = _mode(policy, training)
    rm = None if running_mean is None else running_mean.detach().double()
    rv = None if running_var is None else running_var.detach().double()
    needs_running = mode in ("running", "renorm", "prior")
    if needs_running and (rm is None or rv is None):
        raise ValueError(f"running statistics are needed for {mode!r} normalization")
    details: dict[str, Any] = {}
    # what feeds an update of the running statistics: a mean and an unbiased variance
    upd_mean, upd_var = batch_mean, batch_var * n / (n - 1) if n > 1 else batch_var * math.inf

    if mode == "batch" or mode == "running":
        mean, var = (batch_mean, batch_var) if mode == "batch" else (rm, rv)
        assert mean is not None and var is not None
        inv_std = 1.0 / torch.sqrt(var + eps)
        normalized = (x64 - _broadcast(mean, x64)) * _broadcast(inv_std, x64)
    elif mode == "renorm":
        assert rm is not None and rv is not None
        r_limit, d_limit = _renorm_limits(policy, num_batches_tracked or 0)
        batch_std, running_std = torch.sqrt(batch_var + eps), torch.sqrt(rv + eps)
        r = torch.clamp(batch_std.detach() / running_std, 1.0 / r_limit, r_limit)
        d = torch.clamp((batch_mean.detach() - rm) / running_std, -d_limit, d_limit)
        mean, var, inv_std = batch_mean, batch_var, 1.0 / batch_std
        normalized = (x64 - _broadcast(mean, x64)) / _broadcast(batch_std, x64)
        normalized = normalized * _broadcast(r, x64) + _broadcast(d, x64)
        details.update(r=r, d=d, r_limit=r_limit, d_limit=d_limit)
    elif mode == "ghost":
        parts, g_means, g_vars, sizes = [], [], [], []
        groups = max(1, math.ceil(x64.shape[0] / policy.ghost_size))
        for group in torch.chunk(x64, groups, dim=0):
            g_mean, g_var, g_n = _stats(group)
            parts.append(
                (group - _broadcast(g_mean, group)) / torch.sqrt(_broadcast(g_var, group) + eps)
            )
            g_means.append(g_mean)
            g_vars.append(g_var)
            sizes.append(g_n)
        normalized = torch.cat(parts, dim=0)
        counts = torch.tensor(sizes, dtype=torch.float64)[:, None]
        means, variances = torch.stack(g_means), torch.stack(g_vars)
        mean = (means * counts).sum(0) / counts.sum()
        var = (variances * counts).sum(0) / counts.sum()
        inv_std = 1.0 / torch.sqrt(var + eps)
        upd_mean = mean
        upd_var = (variances * counts * counts / (counts - 1)).sum(0) / counts.sum()
        details.update(sizes=sizes, means=means.detach(), vars=variances.detach())
    else:  # prior
        assert rm is not None and rv is not None
        samples = x64.shape[0]
        strength = policy.prior_strength
        if math.isinf(strength):
            w_prior = 1.0
        else:  # N = 0 is batch statistics, also for an empty batch
            w_prior = strength / (strength + samples) if strength > 0 else 0.0
        mean = w_prior * rm + (1 - w_prior) * batch_mean
        var = w_prior * rv + (1 - w_prior) * batch_var
        inv_std = 1.0 / torch.sqrt(var + eps)
        normalized = (x64 - _broadcast(mean, x64)) * _broadcast(inv_std, x64)
        details.update(weight=w_prior, samples=samples)

    trainable = policy.affine is Affine.TRAINABLE
    w = b = None
    out = normalized
    if weight is not None:
        w = weight.double() if trainable else weight.detach().double()
        out = out * _broadcast(w, x64)
    if bias is not None:
        b = bias.double() if trainable else bias.detach().double()
        out = out + _broadcast(b, x64)

    phase_ok = policy.update_in is Phase.ALWAYS or ((policy.update_in is Phase.TRAIN) == training)
    updated = policy.update is not Update.NEVER and phase_ok
    factor: float | None = None
    new_rm, new_rv, new_nbt = rm, rv, num_batches_tracked
    skipped = False
    rule = "none"
    if updated:
        if rm is None or rv is None:
            raise ValueError("running statistics are needed to update them")
        k = (num_batches_tracked or 0) + 1
        m = policy.momentum if policy.momentum is not None else momentum
        if policy.update is Update.CUMULATIVE or m is None:
            factor, rule = 1.0 / k, "cumulative"
        else:
            factor, rule = m, "ema"
        cand_rm = (1 - factor) * rm + factor * upd_mean.detach()
        cand_rv = (1 - factor) * rv + factor * upd_var.detach()
        was_finite = bool(torch.isfinite(rm).all() and torch.isfinite(rv).all())
        now_finite = bool(torch.isfinite(cand_rm).all() and torch.isfinite(cand_rv).all())
        if x64.numel() == 0:  # an empty batch: nothing to fold in, counted as nn.BatchNorm does
            rule = "empty batch"
            new_nbt = None if num_batches_tracked is None else k
        elif was_finite and not now_finite:
            skipped = True
        else:
            new_rm, new_rv = cand_rm, cand_rv
            new_nbt = None if num_batches_tracked is None else k

    return ReferenceStep(
        policy=policy,
        training=training,
        input=x64.detach(),
        n=n,
        used=mode,
        why=why,
        batch_mean=batch_mean.detach(),
        batch_var=batch_var.detach(),
        mean=mean.detach(),
        var=var.detach(),
        eps=eps,
        inv_std=inv_std.detach(),
        normalized=normalized.detach(),
        weight=None if w is None else w.detach(),
        bias=None if b is None else b.detach(),
        output=out,
        updated=updated and not skipped,
        update_rule=rule,
        factor=factor,
        skipped=skipped,
        running_mean=rm,
        running_var=rv,
        new_running_mean=new_rm,
        new_running_var=new_rv,
        num_batches_tracked=num_batches_tracked,
        new_num_batches_tracked=new_nbt,
        affine_trainable=trainable,
        update_mean=upd_mean.detach(),
        update_var=upd_var.detach(),
        details=details,
    )


def reference_step(
    layer: nn.Module, x: Tensor, *, policy: Policy | None = None, training: bool | None = None
) -> ReferenceStep:
    """:func:`reference_forward` with the state, policy and phase of a BatchNorm layer."""
    from bnkit.apply import policy_of

    pol = policy if policy is not None else policy_of(layer)
    nbt = getattr(layer, "num_batches_tracked", None)
    return reference_forward(
        pol,
        x,
        training=layer.training if training is None else training,
        weight=getattr(layer, "weight", None),
        bias=getattr(layer, "bias", None),
        running_mean=getattr(layer, "running_mean", None),
        running_var=getattr(layer, "running_var", None),
        num_batches_tracked=None if nbt is None else int(nbt),
        eps=float(getattr(layer, "eps", 1e-5)),
        momentum=getattr(layer, "momentum", 0.1),
    )
