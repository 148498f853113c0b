"""Forward paths of the strategies beyond plain batch/running statistics (formulas in
:mod:`bnkit.policy`): batch renormalization, ghost batches, prior mixing, and synchronized
batch statistics."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from bnkit import _sync
from bnkit import functional as BF
from bnkit._running import Plan, RunningStats
from bnkit.policy import Normalize, Policy

__all__ = ["StrategyForward"]


class StrategyForward(RunningStats):
    """Mixin of managed layers: renorm, ghost and prior paths, and synchronization."""

    _bnkit_policy: Policy
    _bnkit_sync: Any = None

    # ------------------------------------------------------------------ synchronization
    def _bnkit_group(self) -> Any:
        """The process group batch statistics are synchronized over now, or None."""
        return _sync.resolve_group(self._bnkit_sync)

    def _bnkit_moments(self, x: Tensor) -> tuple[Tensor, Tensor, int, int]:
        """Differentiable batch mean and biased variance, over all ranks when synchronized.

        Returns ``(mean, var, values per channel, samples)``.
        """
        group = self._bnkit_group()
        if group is not None:
            return _sync.global_moments(x, group)
        mean, var = BF.moments(x)
        return mean, var, BF.values_per_channel(x), x.shape[0]

    def _bnkit_synced_batch(
        self, x: Tensor, weight: Tensor | None, bias: Tensor | None, plan: Plan
    ) -> Tensor:
        mean, var, n, _ = self._bnkit_moments(x)
        out = BF.affine_normalize(x, mean, var, weight, bias, self.eps)
        if plan.update:
            self._bnkit_update_with(mean, var * (n / (n - 1)), plan)
        return out

    def _bnkit_batch_normalize(
        self,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        factor: float,
    ) -> Tensor:
        group = self._bnkit_group()
        ghost = self._bnkit_policy.normalize is Normalize.GHOST  # ghost batches stay per rank
        if group is not None and x.device.type == "cuda" and not ghost:
            # PyTorch's own kernels: count-weighted, gradients through the exchange.
            from torch.nn.modules._functions import SyncBatchNorm as _SyncFn

            out: Tensor = _SyncFn.apply(  # type: ignore[no-untyped-call]
                x, weight, bias, running_mean, running_var, self.eps, factor, group,
                dist.get_world_size(group),
            )  # fmt: skip
            return out
        return super()._bnkit_batch_normalize(x, weight, bias, running_mean, running_var, factor)

    def _bnkit_local_sync(self, x: Tensor) -> bool:
        """Whether batch statistics must be exchanged by bnkit (synchronized, not on CUDA)."""
        return self._bnkit_group() is not None and x.device.type != "cuda"

    # ------------------------------------------------------------------ strategies
    def _bnkit_renorm(
        self, x: Tensor, weight: Tensor | None, bias: Tensor | None, plan: Plan
    ) -> Tensor:
        p = self._bnkit_policy
        mean, var = self._bnkit_running()
        if plan.update:  # the update below must not change what r and d are computed from
            mean, var = BF.snapshot(mean), BF.snapshot(var)
        r_limit, d_limit = self._bnkit_renorm_limits(p)
        if self._bnkit_local_sync(x):
            batch_mean, batch_var, n, _ = self._bnkit_moments(x)
            r, d = BF.renorm_correction(
                batch_mean, batch_var, mean, var, self.eps, r_limit, d_limit
            )
            w, b = _fold(weight, bias, r, d)
            out = BF.affine_normalize(x, batch_mean, batch_var, w, b, self.eps)
            if plan.update:
                self._bnkit_update_with(batch_mean, batch_var * (n / (n - 1)), plan)
            return out
        batch_mean, batch_var = BF.batch_stats(x)
        r, d = BF.renorm_correction(batch_mean, batch_var, mean, var, self.eps, r_limit, d_limit)
        w, b = _fold(weight, bias, r, d)
        if plan.update:
            return self._bnkit_batch_with_update(x, w, b, plan)
        return self._bnkit_batch_normalize(x, w, b, None, None, 0.0)

    def _bnkit_renorm_limits(self, p: Policy) -> tuple[float | Tensor, float | Tensor]:
        if not p.renorm_warmup and not p.renorm_ramp:
            return p.r_max, p.d_max
        nbt = self.num_batches_tracked
        if nbt is None:
            return BF.renorm_limits(0, p.r_max, p.d_max, p.renorm_warmup, p.renorm_ramp)
        # On the device, so that neither eager mode nor torch.compile reads the counter.
        step = nbt.to(torch.float64)
        if p.renorm_ramp:
            t = ((step - p.renorm_warmup) / p.renorm_ramp).clamp(0.0, 1.0)
        else:
            t = (step >= p.renorm_warmup).to(torch.float64)
        return 1.0 + t * (p.r_max - 1.0), t * p.d_max

    def _bnkit_ghost(
        self, x: Tensor, weight: Tensor | None, bias: Tensor | None, plan: Plan
    ) -> Tensor:
        size = self._bnkit_policy.ghost_size
        if x.shape[0] <= size:  # one ghost batch: plain batch statistics, bit for bit
            if plan.update:
                return self._bnkit_batch_with_update(x, weight, bias, plan)
            return self._bnkit_batch_normalize(x, weight, bias, None, None, 0.0)
        out, means, variances, counts = BF.ghost_normalize(x, weight, bias, self.eps, size)
        if plan.update:
            n = torch.tensor(counts, dtype=means.dtype, device=means.device).unsqueeze(1)
            mean = (means * n).sum(0) / n.sum()
            unbiased = (variances * n * n / (n - 1)).sum(0) / n.sum()
            self._bnkit_update_with(mean, unbiased, plan)
        return out

    def _bnkit_prior(
        self, x: Tensor, weight: Tensor | None, bias: Tensor | None, plan: Plan
    ) -> Tensor:
        strength = self._bnkit_policy.prior_strength
        if strength == 0:
            return self._bnkit_plain(x, weight, bias, plan, batch=True)
        if strength == float("inf"):
            return self._bnkit_plain(x, weight, bias, plan, batch=False)
        running_mean, running_var = self._bnkit_running()
        if plan.update:
            running_mean, running_var = BF.snapshot(running_mean), BF.snapshot(running_var)
        if self._bnkit_local_sync(x) or torch.compiler.is_compiling():
            # Differentiable statistics: the exchange needs them, and compiled graphs fuse them
            # (the eager fast path is a custom autograd function).
            batch_mean, batch_var, n, samples = self._bnkit_moments(x)
            w = BF.prior_weight(strength, samples)
            mean = w * running_mean + (1 - w) * batch_mean
            var = w * running_var + (1 - w) * batch_var
            out = BF.affine_normalize(x, mean, var, weight, bias, self.eps)
        else:
            n, w = BF.values_per_channel(x), BF.prior_weight(strength, x.shape[0])
            out, batch_mean, batch_var = BF.mixed_normalize(
                x, weight, bias, running_mean, running_var, w, self.eps
            )
        if plan.update:
            self._bnkit_update_with(batch_mean, batch_var * (n / (n - 1)), plan)
        return out

    def _bnkit_plain(
        self, x: Tensor, weight: Tensor | None, bias: Tensor | None, plan: Plan, *, batch: bool
    ) -> Tensor:
        """Plain batch statistics (``batch=True``) or running statistics."""
        if batch:
            if self._bnkit_local_sync(x):
                return self._bnkit_synced_batch(x, weight, bias, plan)
            if plan.update:
                return self._bnkit_batch_with_update(x, weight, bias, plan)
            return self._bnkit_batch_normalize(x, weight, bias, None, None, 0.0)
        if plan.update:
            return self._bnkit_running_with_update(x, weight, bias, plan)
        running_mean, running_var = self._bnkit_running()
        return BF.normalize(x, running_mean, running_var, weight, bias, self.eps)


def _fold(
    weight: Tensor | None, bias: Tensor | None, r: Tensor, d: Tensor
) -> tuple[Tensor, Tensor]:
    """gamma·r and gamma·d + beta: batch renormalization as a plain affine on batch-normed x."""
    w = r if weight is None else weight * r
    b = d if weight is None else weight * d
    return w, b if bias is None else b + bias
