"""Updating a managed layer's running statistics, with the NaN/Inf guard and the counter.

An update that would turn finite running statistics into NaN/Inf is undone. On CPU in eager
mode the check reads one number on the host and warns; on accelerators and under
``torch.compile`` the choice is made on the device with ``torch.where`` (no synchronization),
silently. ``num_batches_tracked`` counts an update only once it has happened, so a forward that
fails part-way leaves it as it was.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit import functional as BF
from bnkit.errors import LayerError, NonFiniteBatchWarning
from bnkit.layers.recompute import recomputing, remember
from bnkit.layers.state import ManagedState, Plan
from bnkit.layers.sync import Exchange, global_moments
from bnkit.policy import Normalize

__all__ = ["Update", "renorm_limits", "running", "sync_free"]


def sync_free(t: Tensor) -> bool:
    """Whether guards must avoid host reads (compiled graphs, torch.func, accelerators)."""
    return torch.compiler.is_compiling() or BF.transformed() or t.device.type != "cpu"


def running(layer: _BatchNorm, state: ManagedState) -> tuple[Tensor, Tensor]:
    """The layer's running statistics (an error names the layer when it has none)."""
    mean, var = layer.running_mean, layer.running_var
    if mean is None or var is None:
        raise LayerError(
            f"layer {state.label(layer)!r} has no running statistics "
            "(built with track_running_stats=False) but its policy needs them"
        )
    return mean, var


def renorm_limits(layer: _BatchNorm, state: ManagedState) -> tuple[float | Tensor, float | Tensor]:
    """The renorm limits after the layer's updates so far (on the device when counted; a layer
    without a counter is always at its first update)."""
    p, nbt = state.policy, layer.num_batches_tracked
    step: int | Tensor = 0 if nbt is None else nbt
    return BF.renorm_limits(step, p.r_max, p.d_max, p.renorm_warmup, p.renorm_ramp)


class Update:
    """One update of a layer's running statistics: where it goes, its factor, and the commit
    that checks the result and counts it.

    On CPU in eager mode the buffers themselves are written (and restored by :meth:`commit` if
    the batch was not finite); elsewhere copies are written and :meth:`commit` selects between
    them and the old values on the device. Inside :func:`bnkit.accumulate` nothing is written:
    the batch's statistics go to the layer's :class:`~bnkit.layers.pending.Pending`.
    """

    def __init__(self, layer: _BatchNorm, state: ManagedState, plan: Plan) -> None:
        self.layer, self.state, self.plan = layer, state, plan
        self.pending = state.pending
        mean, var = running(layer, state)
        self.sync_free = sync_free(mean)
        # A recomputed forward (activation checkpointing) runs the same ops on scratch copies.
        self.scratch = recomputing()
        writes = self.pending is None and not self.scratch
        in_place = writes and not self.sync_free
        # what the buffers held: for the guard to restore, and for a recomputation to replay
        keep = in_place or (writes and plan.mode in _READS_RUNNING)
        self.old = (mean.clone(), var.clone()) if keep else None
        if in_place or self.pending is not None:
            self.mean, self.var = mean, var
        else:
            self.mean, self.var = mean.clone(), var.clone()
        self.factor = _factor(layer, plan) if self.pending is None else 0.0

    @property
    def deferred(self) -> bool:
        """Whether the update is held back for the optimizer step (inside ``accumulate``)."""
        return self.pending is not None

    def observe(self, x: Tensor, ex: Exchange | None) -> None:
        """Hold back the statistics of the batch ``x`` (over all ranks when synchronized)."""
        assert self.pending is not None
        if self.scratch:
            return
        if ex is not None:
            with torch.no_grad():
                mean, var, n, _ = global_moments(x.detach(), ex)
        else:
            mean, var = BF.batch_stats(x)
            n = BF.values_per_channel(x)
        self.pending.add(n, mean, var)

    def fold(self, mean: Tensor, var: Tensor, n: int) -> None:
        """Fold a batch of ``n`` values per channel with ``mean`` and biased ``var`` in."""
        if self.pending is not None:
            if not self.scratch:
                self.pending.add(n, mean, var)
            return
        self.fold_unbiased(mean, BF.unbiased(var, n))

    def fold_within(self, mean: Tensor, unbiased_var: Tensor, n: int) -> None:
        """Fold ghost batches in: ``n`` values in all, their mean and unbiased variance."""
        if self.pending is not None:
            if not self.scratch:
                self.pending.add_within(n, mean, unbiased_var)
            return
        self.fold_unbiased(mean, unbiased_var)

    def fold_unbiased(self, mean: Tensor, unbiased_var: Tensor) -> None:
        """Fold a mean and an unbiased variance into the buffers with the factor."""
        with torch.no_grad():
            BF.ema(self.mean, mean.detach().to(self.mean.dtype), self.factor, inplace=True)
            BF.ema(self.var, unbiased_var.detach().to(self.var.dtype), self.factor, inplace=True)

    def commit(self) -> None:
        """Keep the update unless it made finite statistics non-finite; count it if kept."""
        if self.pending is not None or self.scratch:
            return
        nbt = self.layer.num_batches_tracked
        replayed = self.old is not None and self.plan.mode in _READS_RUNNING
        counted = nbt.clone() if replayed and nbt is not None else None
        mean, var = running(self.layer, self.state)
        if self.sync_free:
            keep = torch.isfinite(self.mean + self.var).all() | ~torch.isfinite(mean + var).all()
            mean.copy_(torch.where(keep, self.mean, mean))
            var.copy_(torch.where(keep, self.var, var))
            if nbt is not None:
                nbt.add_(keep.to(nbt.dtype))
        elif _undone(mean, var, self.old):
            warnings.warn(
                NonFiniteBatchWarning(
                    f"layer {self.state.label(self.layer)!r}: the batch has NaN/Inf statistics; "
                    "its update of the running statistics was skipped"
                ),
                stacklevel=6,
            )
            return
        elif nbt is not None:
            nbt.add_(1)
        if replayed:
            assert self.old is not None
            remember(self.layer, self.old, counted)


_READS_RUNNING = (Normalize.RUNNING, Normalize.RENORM, Normalize.PRIOR)


def _factor(layer: _BatchNorm, plan: Plan) -> float | Tensor:
    """``momentum`` (the policy's, else the layer's), or ``1/k`` for the k-th update."""
    momentum = plan.momentum if plan.momentum is not None else layer.momentum
    if not plan.cumulative and momentum is not None:
        return float(momentum)
    nbt = layer.num_batches_tracked
    if nbt is None:
        raise LayerError(
            f"layer {type(layer).__name__!r} has no num_batches_tracked buffer, which a "
            "cumulative update (momentum=None) counts"
        )
    if torch.compiler.is_compiling() or BF.transformed():  # no host read of the counter
        dtype = layer.running_mean.dtype if layer.running_mean is not None else torch.float32
        return 1.0 / (nbt + 1).to(dtype)
    return 1.0 / (float(nbt) + 1.0)


def _undone(mean: Tensor, var: Tensor, old: tuple[Tensor, Tensor] | None) -> bool:
    """Undo an update that turned finite statistics into NaN/Inf; whether it was undone."""
    assert old is not None
    # The batch's mean is non-finite only with its variance (inf − inf is NaN), so the
    # variance alone tells: one sum read on the host (~2 µs whatever the channels).
    if math.isfinite(var.sum().item()):
        return False
    if bool(torch.isfinite(mean).all() & torch.isfinite(var).all()):
        return False  # only the sum overflowed
    if not bool(torch.isfinite(old[0]).all() & torch.isfinite(old[1]).all()):
        return False  # already non-finite before this batch: nothing to protect
    # .data: autograd may hold the buffers for the backward of this forward.
    mean.data.copy_(old[0])
    var.data.copy_(old[1])
    return True
