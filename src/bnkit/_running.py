"""Updates of a managed layer's running statistics, with the NaN/Inf guard.

An update that would turn finite running statistics into NaN/Inf is undone. On CPU in eager
mode the check reads one number on the host and warns; on accelerators and under
``torch.compile`` the choice is made on the device with ``torch.where`` (no synchronization),
silently.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit import functional as BF
from bnkit.errors import LayerError, NonFiniteBatchWarning
from bnkit.policy import Normalize

__all__ = ["Plan", "RunningStats", "sync_free"]


class Plan(NamedTuple):
    """What one forward does in one phase: resolved once, when the policy is applied."""

    mode: Normalize
    """The statistics used: BATCH, RUNNING, RENORM, GHOST or PRIOR."""
    update: bool
    """Update the running statistics."""
    cumulative: bool
    """Update factor 1/k (else ``momentum``)."""
    momentum: float
    frozen_affine: bool


def sync_free(t: Tensor) -> bool:
    """Whether guards must avoid host synchronization (compiled graphs, accelerators)."""
    return torch.compiler.is_compiling() or t.device.type != "cpu"


class RunningStats(_BatchNorm):
    """Mixin of managed layers: reading, counting and updating the running statistics."""

    _bnkit_name: str

    def _bnkit_label(self) -> str:
        return self._bnkit_name or type(self).__name__

    def _bnkit_running(self) -> tuple[Tensor, Tensor]:
        mean, var = self.running_mean, self.running_var
        if mean is None or var is None:
            raise LayerError(
                f"layer {self._bnkit_label()!r} has no running statistics "
                "(built with track_running_stats=False) but its policy needs them"
            )
        return mean, var

    def _bnkit_count(self) -> bool:
        nbt = self.num_batches_tracked
        if nbt is None:
            return False
        nbt.add_(1)
        return True

    def _bnkit_factor(self, plan: Plan) -> float:
        """The update factor: ``momentum``, or ``1/k`` on the k-th update (read on the host)."""
        if not plan.cumulative:
            return plan.momentum
        nbt = self.num_batches_tracked
        assert nbt is not None  # checked when the policy was applied
        return 1.0 / float(nbt)

    def _bnkit_device_factor(self, plan: Plan) -> float | Tensor:
        # torch.compile cannot read the counter on the host: keep a cumulative factor on device.
        nbt = self.num_batches_tracked
        if plan.cumulative and torch.compiler.is_compiling() and nbt is not None:
            return 1.0 / nbt.to(self._bnkit_running()[0].dtype)
        return self._bnkit_factor(plan)

    def _bnkit_update_with(self, mean: Tensor, unbiased_var: Tensor, plan: Plan) -> None:
        """Fold the given per-channel mean and unbiased variance into the running statistics."""
        running_mean, running_var = self._bnkit_running()
        counted = self._bnkit_count()
        factor = self._bnkit_device_factor(plan)
        with torch.no_grad():
            mean, unbiased_var = mean.detach(), unbiased_var.detach()
            if sync_free(running_mean):
                new_mean = running_mean * (1 - factor) + factor * mean
                new_var = running_var * (1 - factor) + factor * unbiased_var
                self._bnkit_select(new_mean, new_var, counted)
                return
            old_mean, old_var = running_mean.clone(), running_var.clone()
            running_mean.mul_(1 - factor).add_(factor * mean)
            running_var.mul_(1 - factor).add_(factor * unbiased_var)
        self._bnkit_check(old_mean, old_var, counted)

    def _bnkit_select(self, new_mean: Tensor, new_var: Tensor, counted: bool) -> None:
        """Write the updated statistics unless they turned finite ones into NaN/Inf (no sync)."""
        mean, var = self._bnkit_running()
        keep = torch.isfinite(new_mean + new_var).all() | ~torch.isfinite(mean + var).all()
        mean.copy_(torch.where(keep, new_mean, mean))
        var.copy_(torch.where(keep, new_var, var))
        nbt = self.num_batches_tracked
        if counted and nbt is not None:
            nbt.sub_((~keep).to(nbt.dtype))

    def _bnkit_check(self, old_mean: Tensor, old_var: Tensor, counted: bool) -> None:
        """Undo, with a warning, an update that turned finite statistics into NaN/Inf."""
        mean, var = self._bnkit_running()
        # The batch's mean is non-finite only with its variance (inf − inf is NaN), so the
        # variance alone tells; summed on the host (tolist costs less than a tensor reduction).
        if math.isfinite(sum(var.tolist())):
            return
        if bool(torch.isfinite(mean).all() & torch.isfinite(var).all()):
            return  # only the sum overflowed
        if not bool(torch.isfinite(old_mean).all() & torch.isfinite(old_var).all()):
            return  # already non-finite before this batch: nothing to protect
        # .data: autograd may hold the buffers for the backward of this forward.
        mean.data.copy_(old_mean)
        var.data.copy_(old_var)
        nbt = self.num_batches_tracked
        if counted and nbt is not None:
            nbt.sub_(1)
        warnings.warn(
            NonFiniteBatchWarning(
                f"layer {self._bnkit_label()!r}: the batch has NaN/Inf statistics; its update "
                "of the running statistics was skipped"
            ),
            stacklevel=5,
        )

    # ------------------------------------------------------------------ the native paths
    def _bnkit_batch_normalize(
        self,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        factor: float,
    ) -> Tensor:
        """Normalize with batch statistics (updating the given buffers in the same kernel)."""
        return BF.normalize_with_batch(x, weight, bias, self.eps, running_mean, running_var, factor)

    def _bnkit_batch_with_update(
        self, x: Tensor, weight: Tensor | None, bias: Tensor | None, plan: Plan
    ) -> Tensor:
        mean, var = self._bnkit_running()
        counted = self._bnkit_count()
        if sync_free(mean):
            # The kernel updates copies (autograd saves what it is given), selected on the device.
            new_mean, new_var = mean.clone(), var.clone()
            if plan.cumulative and torch.compiler.is_compiling():
                out = self._bnkit_batch_normalize(x, weight, bias, None, None, 0.0)
                BF.update_running_stats(x, new_mean, new_var, self._bnkit_device_factor(plan))
            else:
                factor = self._bnkit_factor(plan)
                out = self._bnkit_batch_normalize(x, weight, bias, new_mean, new_var, factor)
            self._bnkit_select(new_mean, new_var, counted)
            return out
        old_mean, old_var = mean.clone(), var.clone()
        out = self._bnkit_batch_normalize(x, weight, bias, mean, var, self._bnkit_factor(plan))
        self._bnkit_check(old_mean, old_var, counted)
        return out

    def _bnkit_running_with_update(
        self, x: Tensor, weight: Tensor | None, bias: Tensor | None, plan: Plan
    ) -> Tensor:
        mean, var = self._bnkit_running()
        used_mean, used_var = BF.snapshot(mean), BF.snapshot(var)
        counted = self._bnkit_count()
        if sync_free(mean):
            new_mean, new_var = mean.clone(), var.clone()
            BF.update_running_stats(x, new_mean, new_var, self._bnkit_device_factor(plan))
            self._bnkit_select(new_mean, new_var, counted)
        else:
            BF.update_running_stats(x, mean, var, self._bnkit_factor(plan))
            self._bnkit_check(used_mean, used_var, counted)
        return BF.normalize(x, used_mean, used_var, weight, bias, self.eps)
