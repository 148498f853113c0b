"""An independent float64 reference of every policy: the oracle for bnkit's tests and ``explain``.

It shares nothing with the fast path but the :class:`~bnkit.policy.Policy` value: statistics are
plain sums over the values of each channel, the normalization is written out term by term,
and the policy's axes are read directly. It is slow on purpose and differentiable (gradients
reach the input and, when the policy lets them, gamma and beta).
"""

from __future__ import annotations

import dataclasses

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
    """``"batch"`` or ``"running"``: which statistics normalized the input."""
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


def _per_channel(x: Tensor) -> Tensor:
    """(C, n) view of the values of each channel."""
    return x.transpose(0, 1).reshape(x.shape[1], -1)


def _broadcast(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


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
) -> ReferenceStep:
    """One forward of a BatchNorm layer with ``policy``, computed step by step in float64.

    Nothing passed in is modified; the new running statistics are returned.
    """
    x64 = x.double()
    values = _per_channel(x64)
    n = values.shape[1]
    batch_mean = values.sum(dim=1) / n
    batch_var = ((values - batch_mean[:, None]) ** 2).sum(dim=1) / n

    if policy.normalize is Normalize.BATCH:
        use_batch, why = True, "policy normalizes with batch statistics in every phase"
    elif policy.normalize is Normalize.RUNNING:
        use_batch, why = False, "policy normalizes with running statistics in every phase"
    else:
        use_batch = training
        why = f"policy follows the phase, and the layer is in {'train' if training else 'eval'}()"

    rm = None if running_mean is None else running_mean.detach().double()
    rv = None if running_var is None else running_var.detach().double()
    if use_batch:
        mean, var = batch_mean, batch_var
    else:
        if rm is None or rv is None:
            raise ValueError("running statistics are needed to normalize with them")
        mean, var = rm, rv

    inv_std = 1.0 / torch.sqrt(var + eps)
    normalized = (x64 - _broadcast(mean, x64)) * _broadcast(inv_std, x64)
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
        if policy.update is Update.CUMULATIVE:
            factor, rule = 1.0 / k, "cumulative"
        else:
            factor, rule = policy.momentum, "ema"
        unbiased = batch_var.detach() * n / (n - 1)
        cand_rm = (1 - factor) * rm + factor * batch_mean.detach()
        cand_rv = (1 - factor) * rv + factor * unbiased
        was_finite = bool(torch.isfinite(rm).all() and torch.isfinite(rv).all())
        now_finite = bool(torch.isfinite(cand_rm).all() and torch.isfinite(cand_rv).all())
        if was_finite and not now_finite:
            skipped = True
        else:
            new_rm, new_rv = cand_rm, cand_rv
            new_nbt = None if num_batches_tracked is None else k

    return ReferenceStep(
        policy=policy,
        training=training,
        input=x64.detach(),
        n=n,
        used="batch" if use_batch else "running",
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
    )
