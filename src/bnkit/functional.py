"""The pure functional core: BatchNorm math on the statistics it is given.

Nothing here decides *which* statistics to use; :mod:`bnkit._managed` does that from a policy.
The formulas are in :mod:`bnkit.policy`. Each function runs on PyTorch's own BatchNorm kernels
(``torch.batch_norm`` and ``torch.batch_norm_update_stats``), so wherever ``nn.BatchNorm`` can
express a behaviour the results are bit-for-bit the same.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "affine_normalize",
    "batch_stats",
    "ghost_normalize",
    "mixed_normalize",
    "moments",
    "normalize",
    "normalize_with_batch",
    "prior_weight",
    "renorm_correction",
    "renorm_limits",
    "snapshot",
    "update_running_stats",
    "values_per_channel",
]


def _snapshot_impl(t: Tensor) -> Tensor:
    return t.clone()


_snapshot_op: Callable[[Tensor], Tensor]
if hasattr(torch.library, "custom_op"):
    # An opaque copy. Under torch.compile, a plain clone of a buffer that the same graph then
    # updates may be recomputed in the backward from the *updated* buffer (a partitioner bug in
    # torch 2.13, pytorch/pytorch#197039), giving wrong gradients; an opaque op is saved instead.
    _op = torch.library.custom_op("bnkit::snapshot", mutates_args=())(_snapshot_impl)
    _op.register_fake(lambda t: torch.empty_like(t))
    _snapshot_op = _op
else:  # pragma: no cover - torch < 2.4
    _snapshot_op = _snapshot_impl


def snapshot(t: Tensor) -> Tensor:
    """A copy of ``t`` that stays a copy when traced by ``torch.compile``."""
    if torch.compiler.is_compiling():
        return _snapshot_op(t)
    return t.clone()


def values_per_channel(x: Tensor) -> int:
    """How many values each channel's batch statistics are computed from (``numel / C``)."""
    n = 1
    for i, size in enumerate(x.shape):
        if i != 1:
            n *= size
    return n


def normalize(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """Normalize ``x`` with the given per-channel ``mean`` and biased ``var``, then scale/shift.

    No gradient flows to ``mean`` or ``var``; they are treated as constants.
    """
    return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)


def normalize_with_batch(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    running_mean: Tensor | None = None,
    running_var: Tensor | None = None,
    factor: float = 0.0,
) -> Tensor:
    """Normalize ``x`` with its own batch statistics (gradients flow through them).

    When ``running_mean``/``running_var`` are given they are updated in place with factor
    ``factor`` (see :mod:`bnkit.policy`), in the same kernel as the normalization.
    """
    return F.batch_norm(x, running_mean, running_var, weight, bias, True, factor, eps)


def update_running_stats(
    x: Tensor, running_mean: Tensor, running_var: Tensor, factor: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Update the running statistics in place from the batch ``x``; return its mean and biased var.

    Builds no autograd graph. ``factor`` may be a tensor (a cumulative factor read on the device).
    """
    with torch.no_grad():
        if isinstance(factor, Tensor) or torch.compiler.is_compiling():
            # torch.batch_norm_update_stats writes its buffers without declaring it, so a traced
            # graph would drop the write: spell the update out instead.
            mean, var = torch.batch_norm_update_stats(x, None, None, 0.0)
            n = values_per_channel(x)
            running_mean.mul_(1 - factor).add_(factor * mean)
            running_var.mul_(1 - factor).add_(factor * var * (n / (n - 1)))
        else:
            mean, var = torch.batch_norm_update_stats(x, running_mean, running_var, factor)
    return mean, var


def batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel batch mean and biased variance of ``x`` (no autograd graph)."""
    with torch.no_grad():
        mean, var = torch.batch_norm_update_stats(x, None, None, 0.0)
    return mean, var


# --------------------------------------------------------------------------- strategies
def _dims(x: Tensor) -> list[int]:
    return [d for d in range(x.dim()) if d != 1]


def _per_channel(v: Tensor, x: Tensor) -> Tensor:
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


def moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of ``x``, differentiable (two passes)."""
    dims = _dims(x)
    mean = x.mean(dims)
    var = (x - _per_channel(mean, x)).square().mean(dims)
    return mean, var


def affine_normalize(
    x: Tensor,
    mean: Tensor,
    var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias`` with gradients to every argument."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return x * _per_channel(scale, x) + _per_channel(shift, x)


def renorm_limits(
    step: int, r_max: float, d_max: float, warmup: int, ramp: int
) -> tuple[float, float]:
    """The clipping limits of batch renormalization after ``step`` updates.

    (1, 0) during the first ``warmup`` updates, then rising linearly to (``r_max``, ``d_max``)
    over ``ramp`` updates.
    """
    if step < warmup:
        return 1.0, 0.0
    if ramp and step < warmup + ramp:
        t = (step - warmup) / ramp
        return 1.0 + t * (r_max - 1.0), t * d_max
    return r_max, d_max


def renorm_correction(
    batch_mean: Tensor,
    batch_var: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    r_limit: float | Tensor,
    d_limit: float | Tensor,
) -> tuple[Tensor, Tensor]:
    """The batch renormalization factors ``r`` and ``d`` (no gradient; see :mod:`bnkit.policy`)."""
    with torch.no_grad():
        running_std = torch.sqrt(running_var + eps)
        r_hi = torch.as_tensor(r_limit, dtype=batch_var.dtype, device=batch_var.device)
        d_hi = torch.as_tensor(d_limit, dtype=batch_var.dtype, device=batch_var.device)
        r = torch.clamp(torch.sqrt(batch_var + eps) / running_std, 1.0 / r_hi, r_hi)
        d = torch.clamp((batch_mean - running_mean) / running_std, -d_hi, d_hi)
    return r, d


def ghost_normalize(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, ghost_size: int
) -> tuple[Tensor, Tensor, Tensor, list[int]]:
    """Normalize each group of ``ghost_size`` samples with its own batch statistics.

    Returns the output and, per group, the mean, the biased variance (shape ``(G, C)``) and the
    number of values per channel.
    """
    if torch.compiler.is_compiling():
        outs, means, invstds = [], [], []
        for chunk in torch.split(x, ghost_size, dim=0):
            out, mean, invstd = torch.native_batch_norm(
                chunk, weight, bias, None, None, True, 0.0, eps
            )
            outs.append(out)
            means.append(mean.detach())
            invstds.append(invstd.detach())
        y, mean_t, invstd_t = torch.cat(outs, dim=0), torch.stack(means), torch.stack(invstds)
    else:
        stats: list[Tensor] = []
        y = _GhostBatchNorm.apply(x, weight, bias, ghost_size, eps, stats)  # type: ignore[no-untyped-call]
        mean_t, invstd_t = stats
    counts = [values_per_channel(c) for c in torch.split(x, ghost_size, dim=0)]
    return y, mean_t, invstd_t.pow(-2) - eps, counts


class _GhostBatchNorm(torch.autograd.Function):
    """BatchNorm over consecutive groups of samples, each group on the native kernels.

    Every group is normalized straight into its slice of one output (no concatenation), and
    its backward is BatchNorm's own backward on that slice.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        size: int,
        eps: float,
        stats: list[Tensor],
    ) -> Tensor:
        out = torch.empty_like(x)
        groups = x.shape[0] // size + (x.shape[0] % size > 0)
        acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        means = x.new_empty((groups, x.shape[1]), dtype=acc)
        invstds = x.new_empty((groups, x.shape[1]), dtype=acc)
        for i, chunk in enumerate(torch.split(x, size, dim=0)):
            torch.ops.aten.native_batch_norm.out(
                chunk, weight, bias, None, None, True, 0.0, eps,
                out=out[i * size : i * size + chunk.shape[0]],
                save_mean=means[i], save_invstd=invstds[i],
            )  # fmt: skip
        ctx.save_for_backward(x, weight, means, invstds)
        ctx.size, ctx.eps = size, eps
        stats.extend([means, invstds])
        return out

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, means, invstds = ctx.saved_tensors
        size = ctx.size
        dx = torch.empty_like(x)
        dweight = dbias = None
        for i, chunk in enumerate(torch.split(x, size, dim=0)):
            rows = slice(i * size, i * size + chunk.shape[0])
            gx, gw, gb = torch.ops.aten.native_batch_norm_backward(
                dy[rows], chunk, weight, None, None, means[i], invstds[i], True, ctx.eps,
                [True, True, True],
            )  # fmt: skip
            dx[rows] = gx
            dweight = gw if dweight is None else dweight + gw
            dbias = gb if dbias is None else dbias + gb
        needs = ctx.needs_input_grad
        return (
            dx if needs[0] else None,
            dweight if needs[1] else None,
            dbias if needs[2] else None,
            None,
            None,
            None,
        )


def prior_weight(strength: float, n: int) -> float:
    """The weight ``N / (N + n)`` of the running statistics for prior strength ``N``."""
    if math.isinf(strength):
        return 1.0
    return strength / (strength + n) if strength + n > 0 else 0.0


class _MixedNormalize(torch.autograd.Function):
    """Normalization with running statistics mixed with the batch's, on native kernels.

    The gradient through the batch part of the mix is added to the eval-mode BatchNorm
    gradient; with mixed statistics (mean, var), s = 1/sqrt(var + eps), batch mean m_B, weight
    w of the running statistics and n values per channel::

        dx = γ s [dy − (1−w)/n · Σdy − (1−w) s/n · Σ(dy·x̂) · (x − m_B)]
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        mean: Tensor,
        var: Tensor,
        batch_mean: Tensor,
        w: float,
        eps: float,
    ) -> Tensor:
        ctx.save_for_backward(x, weight, mean, var, batch_mean)
        ctx.w, ctx.eps, ctx.n = w, eps, values_per_channel(x)
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, var, batch_mean = ctx.saved_tensors
        dx, dweight, dbias = torch.ops.aten.native_batch_norm_backward(
            dy, x, weight, mean, var, None, None, False, ctx.eps, [True, True, True]
        )
        if ctx.needs_input_grad[0]:
            invstd = torch.rsqrt(var + ctx.eps)
            gamma = invstd if weight is None else weight * invstd
            k = (1.0 - ctx.w) / ctx.n
            a = gamma * invstd * dweight * k
            c = gamma * dbias * k - a * batch_mean
            # dx − (a·x + c), in place (no fresh full-size tensor)
            dx = dx.addcmul_(x, _per_channel(a, x), value=-1.0).sub_(_per_channel(c, x))
        return (
            dx if ctx.needs_input_grad[0] else None,
            dweight if ctx.needs_input_grad[1] else None,
            dbias if ctx.needs_input_grad[2] else None,
            None,
            None,
            None,
            None,
            None,
        )


def mixed_normalize(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    w: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Normalize with ``w·running + (1−w)·batch`` statistics (gradients through the batch part).

    Returns the output and the batch mean and biased variance.
    """
    batch_mean, batch_var = batch_stats(x)
    mean = w * running_mean + (1 - w) * batch_mean
    var = w * running_var + (1 - w) * batch_var
    out: Tensor = _MixedNormalize.apply(x, weight, bias, mean, var, batch_mean, w, eps)  # type: ignore[no-untyped-call]
    return out, batch_mean, batch_var
