"""Normalization with given or batch statistics on BatchNorm's own kernels (formulas in
:mod:`bnkit.functional`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from bnkit.functional import _autograd
from bnkit.functional.stats import batch_stats, ema, per_channel, unbiased, values_per_channel

__all__ = [
    "affine_normalize",
    "normalize",
    "normalize_on_stats",
    "normalize_with_batch",
    "snapshot",
    "transformed",
    "update_running_stats",
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


def transformed() -> bool:
    """Whether a ``torch.func`` transform (``vmap``, ``grad`` ...) is running this code."""
    return torch._C._functorch.maybe_current_level() is not None


def snapshot(t: Tensor) -> Tensor:
    """A copy of ``t`` that stays a copy when traced by ``torch.compile``."""
    if torch.compiler.is_compiling():
        return _snapshot_op(t)
    return t.clone()


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
    ``factor``, in the same kernel as the normalization.
    """
    return F.batch_norm(x, running_mean, running_var, weight, bias, True, factor, eps)


def normalize_on_stats(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    var: Tensor,
    eps: float,
) -> Tensor:
    """Normalize ``x`` with its batch ``mean`` and biased ``var``, computed beforehand; gradients
    flow through them as in :func:`normalize_with_batch` (which would compute them again)."""
    if torch.compiler.is_compiling() or transformed():
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, eps)
    out: Tensor = _autograd.BatchNormOnStats.apply(x, weight, bias, mean, var, eps)  # type: ignore[no-untyped-call]
    return out


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
    return x * per_channel(scale, x) + per_channel(shift, x)


def update_running_stats(
    x: Tensor, running_mean: Tensor, running_var: Tensor, factor: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Update the running statistics in place from the batch ``x``; return its mean and biased var.

    Builds no autograd graph. ``factor`` may be a tensor (a cumulative factor read on the device).
    """
    with torch.no_grad():
        if isinstance(factor, Tensor) or torch.compiler.is_compiling() or transformed():
            # torch.batch_norm_update_stats writes its buffers without declaring it, so a traced
            # graph would drop the write: spell the update out instead.
            mean, var = batch_stats(x)
            ema(running_mean, mean, factor, inplace=True)
            ema(running_var, unbiased(var, values_per_channel(x)), factor, inplace=True)
        else:
            mean, var = torch.batch_norm_update_stats(x, running_mean, running_var, factor)
    return mean, var
