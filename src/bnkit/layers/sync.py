"""Batch statistics over the ranks of a process group (see :func:`bnkit.synchronize`).

For each channel, every rank contributes the sum of its values and their count, so ranks with
different batch sizes weigh in by their number of values::

    mean = Σ_ranks Σ x / Σ_ranks n,      var = Σ_ranks Σ (x - mean)² / Σ_ranks n

Both sums go through an all-reduce whose backward all-reduces the gradients, so every rank's
gradient is what a single process would compute on the concatenated batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

from bnkit.errors import InputError
from bnkit.functional.stats import channel_dims, per_channel

__all__ = ["WORLD", "GroupRef", "all_reduce_sum", "global_moments", "group_of", "resolve_group"]

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

    Returns ``(mean, var, values per channel, samples)``, the counts summed over ranks. Every
    rank takes part in both exchanges before any of them can fail, so a bad batch on one rank
    fails all ranks alike instead of leaving the others waiting.
    """
    dims = channel_dims(x)
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    n = x.numel() // x.shape[1] if x.shape[1] else 0
    counts = torch.tensor([float(n), float(x.shape[0])], dtype=acc, device=x.device)
    packed = torch.cat([x.sum(dims, dtype=acc), counts])
    summed = all_reduce_sum(packed, group)
    c = x.shape[1]
    total = int(summed[c].item())
    samples = int(summed[c + 1].item())
    mean = summed[:c] / max(total, 1)
    centered = x.to(acc) - per_channel(mean, x)
    var = all_reduce_sum(centered.square().sum(dims), group) / max(total, 1)
    if total <= 1:
        raise InputError(
            f"synchronized batch statistics need more than 1 value per channel over all ranks "
            f"(got {total})"
        )
    return mean, var, total, samples


def resolve_group(marker: Any) -> Any:
    """The process group a marker stands for now, or None (no group, or one rank)."""
    if marker is None or not dist.is_available() or not dist.is_initialized():
        return None
    group = marker.group if isinstance(marker, GroupRef) else dist.group.WORLD
    if dist.get_world_size(group) <= 1:
        return None
    return group


def group_of(layer: nn.Module, marker: Any) -> Any:
    """The group a managed layer synchronizes over now: its :func:`bnkit.synchronize` marker,
    else the ``process_group`` of an ``nn.SyncBatchNorm`` (the world when None)."""
    if marker is None and isinstance(layer, nn.SyncBatchNorm):
        marker = GroupRef(layer.process_group) if layer.process_group else WORLD
    return resolve_group(marker)
