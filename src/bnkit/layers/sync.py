"""Batch statistics over the ranks of a process group (see :func:`bnkit.synchronize`).

For each channel, every rank contributes the sum of its values and their count, so ranks with
different batch sizes weigh in by their number of values::

    mean = Σ_ranks Σ x / Σ_ranks n,      var = Σ_ranks Σ (x - mean)² / Σ_ranks n

Both sums go through an all-reduce whose backward all-reduces the gradients, so every rank's
gradient is what a single process would compute on the concatenated batch.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn as nn
from torch import Tensor

from bnkit.errors import DistributedError, InputError
from bnkit.functional.stats import channel_dims, per_channel

__all__ = [
    "LOCAL",
    "Exchange",
    "SyncSpec",
    "all_reduce_sum",
    "exchange_for",
    "global_moments",
    "wait_collective",
]


@dataclasses.dataclass(frozen=True)
class SyncSpec:
    """How a layer synchronizes: over which group, how long a rank waits for the others.

    A layer with a custom process group cannot be pickled (a group is a live connection);
    ``local`` marks a layer that must not synchronize now (during a recalibration pass).
    """

    group: Any = None
    """The process group; None: the default (world) group, resolved when the layer runs."""
    timeout: float | None = None
    """Seconds one rank waits at one exchange for the other ranks (None: the group's own)."""
    local: bool = False

    def __deepcopy__(self, memo: dict[int, Any]) -> SyncSpec:
        return self

    def __reduce__(self) -> Any:
        if self.group is not None:
            raise TypeError(
                "a layer synchronized over a custom process group cannot be pickled; call "
                "bnkit.desynchronize(model) before saving, and synchronize again after loading"
            )
        return (SyncSpec, (None, self.timeout, self.local))


LOCAL = SyncSpec(local=True)
"""Never synchronize (what a recalibration pass puts on a layer while it runs)."""


class Exchange(NamedTuple):
    """A resolved synchronization: the live group, the wait limit, and the layer's name."""

    group: Any
    timeout: float | None
    label: str


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; its gradient is the sum over ranks of the gradients."""

    @staticmethod
    def forward(ctx: Any, t: Tensor, ex: Exchange) -> Tensor:
        ctx.ex = ex
        out = t.clone()
        _all_reduce(out, ex, "batch statistics")
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        grad = grad.contiguous().clone()
        _all_reduce(grad, ctx.ex, "gradients of the batch statistics")
        return grad, None


def wait_collective(work: Any, timeout: float | None) -> None:
    """Wait for an asynchronous collective, at most ``timeout`` seconds (None: the process
    group's own limit); gloo/NCCL errors and timeouts raise ``RuntimeError``."""
    if timeout is None:
        work.wait()
    else:
        work.wait(timeout=datetime.timedelta(seconds=timeout))


def _all_reduce(t: Tensor, ex: Exchange, what: str) -> None:
    """Sum ``t`` over the ranks in place; a rank left waiting raises a clear error."""
    try:
        wait_collective(
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=ex.group, async_op=True), ex.timeout
        )
    except RuntimeError as err:  # gloo/NCCL errors, timeouts included
        ranks = dist.get_world_size(ex.group)
        limit = f"{ex.timeout:g} s" if ex.timeout is not None else "the process group's timeout"
        raise DistributedError(
            f"layer {ex.label!r}: the exchange of {what} with the other {ranks - 1} rank(s) "
            f"failed or waited past {limit}; another rank failed, ran out of data or skipped "
            f"this forward (every rank must run the same forwards and backwards): {err}"
        ) from err


def all_reduce_sum(t: Tensor, ex: Exchange) -> Tensor:
    """A differentiable sum of ``t`` over the ranks of ``ex.group``."""
    out: Tensor = _AllReduceSum.apply(t, ex)  # type: ignore[no-untyped-call]
    return out


def global_moments(
    x: Tensor, ex: Exchange, mask: Tensor | None = None
) -> tuple[Tensor, Tensor, int, int]:
    """Per-channel mean and biased variance over the batches of all ranks (differentiable).

    With ``mask`` (``(N, L)`` for an ``(N, C, L)`` input) only the positions where it is True
    count. Returns ``(mean, var, values per channel, samples)``, the counts summed over ranks.
    Every rank takes part in both exchanges before any of them can fail, so a bad batch on one
    rank fails all ranks alike instead of leaving the others waiting.
    """
    dims = channel_dims(x)
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    xa = x.to(acc)
    if mask is None:
        weights = None
        n = torch.tensor(float(x.numel() // x.shape[1] if x.shape[1] else 0), dtype=acc)
        sums = xa.sum(dims)
    else:
        weights = mask[:, None, :].to(acc)
        n = mask.sum().to(acc).cpu()
        sums = (xa * weights).sum(dims)
    counts = torch.stack([n, torch.tensor(float(x.shape[0]), dtype=acc)]).to(x.device)
    summed = all_reduce_sum(torch.cat([sums, counts]), ex)
    c = x.shape[1]
    total = int(summed[c].item())
    samples = int(summed[c + 1].item())
    mean = summed[:c] / max(total, 1)
    centered = (xa - per_channel(mean, x)).square()
    if weights is not None:
        centered = centered * weights
    var = all_reduce_sum(centered.sum(dims), ex) / max(total, 1)
    if total <= 1:
        raise InputError(
            f"synchronized batch statistics need more than 1 value per channel over all ranks "
            f"(got {total})"
        )
    return mean, var, total, samples


def exchange_for(layer: nn.Module, spec: SyncSpec | None, label: str) -> Exchange | None:
    """How a managed layer synchronizes now: its :func:`bnkit.synchronize` spec, else the
    ``process_group`` of an ``nn.SyncBatchNorm`` (the world when None); None without a process
    group of several ranks."""
    if spec is None and isinstance(layer, nn.SyncBatchNorm):
        spec = SyncSpec(layer.process_group)
    if spec is None or spec.local or not dist.is_available() or not dist.is_initialized():
        return None
    group = spec.group if spec.group is not None else dist.group.WORLD
    if dist.get_world_size(group) <= 1:
        return None
    return Exchange(group, spec.timeout, label)
