"""Low-level pieces of synchronized batch statistics (see :mod:`bnkit.distributed`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from bnkit.errors import InputError

__all__ = ["WORLD", "GroupRef", "all_reduce_sum", "global_moments", "resolve_group"]

WORLD = "world"
"""Marker for the default process group (resolved when the layer runs)."""


class GroupRef:
    """A process group held by a layer: copied by reference, refused by pickle (with a reason)."""

    def __init__(self, group: Any) -> None:
        self.group = group

    def __deepcopy__(self, memo: dict[int, Any]) -> GroupRef:
        return self

    def __reduce__(self) -> Any:
        raise TypeError(
            "a layer synchronized over a custom process group cannot be pickled; call "
            "bnkit.desynchronize(model) before saving, and synchronize again after loading"
        )


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; its gradient is the sum over ranks of the gradients."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, group: Any) -> Tensor:
        ctx.group = group
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad, None


def all_reduce_sum(t: Tensor, group: Any) -> Tensor:
    """A differentiable sum of ``t`` over the ranks of ``group``."""
    out: Tensor = _AllReduceSum.apply(t, group)  # type: ignore[no-untyped-call]
    return out


def global_moments(x: Tensor, group: Any) -> tuple[Tensor, Tensor, int, int]:
    """Per-channel mean and biased variance over the batches of all ranks (differentiable).

    Returns ``(mean, var, values per channel, samples)``, the counts summed over ranks.
    """
    dims = [d for d in range(x.dim()) if d != 1]
    n = x.numel() // x.shape[1] if x.shape[1] else 0
    counts = torch.tensor([float(n), float(x.shape[0])], dtype=x.dtype, device=x.device)
    packed = torch.cat([x.sum(dims), counts])
    summed = all_reduce_sum(packed, group)
    c = x.shape[1]
    total = int(summed[c].item())
    samples = int(summed[c + 1].item())
    if total <= 1:
        raise InputError(
            f"synchronized batch statistics need more than 1 value per channel over all ranks "
            f"(got {total})"
        )
    mean = summed[:c] / total
    centered = x - mean.reshape(1, -1, *([1] * (x.dim() - 2)))
    var = all_reduce_sum(centered.square().sum(dims), group) / total
    return mean, var, total, samples


def resolve_group(marker: Any) -> Any:
    """The process group a layer synchronizes over now, or None (no group, or one rank)."""
    if marker is None or not dist.is_available() or not dist.is_initialized():
        return None
    group = marker.group if isinstance(marker, GroupRef) else dist.group.WORLD
    if dist.get_world_size(group) <= 1:
        return None
    return group
