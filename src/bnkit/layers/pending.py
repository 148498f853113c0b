"""Running-statistic updates held back until an optimizer step (``bnkit.accumulate``).

While updates are pending, every forward that would update a layer's running statistics adds
the statistics of its batch here instead; the optimizer step then folds them in as *one*
update, so k micro-batches move the statistics as one forward on their concatenation would.
Everything a forward touches is a tensor updated in place (no host reads, no Python state that
changes per forward), so compiled graphs keep it and are not recompiled.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnkit import functional as BF

__all__ = ["Pending"]


class Pending:
    """The held-back batch statistics of one layer.

    Plain batches pool exactly (:func:`bnkit.functional.pool_into`): count, mean and the sum of
    squared deviations. Ghost batches (``within=True``) keep their own rule, the size-weighted
    means of the groups' means and unbiased variances, so they sum weights, weighted means and
    weighted variances.
    """

    def __init__(self, channels: int, device: torch.device, *, within: bool) -> None:
        self.within = within
        # shape (1,), not (): compiled graphs keep in-place writes to these
        self.count = torch.zeros(1, dtype=torch.float64, device=device)
        self.mean = torch.zeros(channels, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(channels, dtype=torch.float64, device=device)
        self.forwards = torch.zeros(1, dtype=torch.int64, device=device)

    def add(self, n: int | Tensor, mean: Tensor, var: Tensor) -> None:
        """One batch of ``n`` values per channel with ``mean`` and biased ``var``."""
        if self.within:
            self.add_within(n, mean, BF.unbiased(var, n))
            return
        with torch.no_grad():
            BF.pool_into(self.count, self.mean, self.m2, n, mean.detach(), var.detach())
            self.forwards.add_(1)

    def add_within(self, n: int | Tensor, mean: Tensor, unbiased_var: Tensor) -> None:
        """Ghost batches: ``n`` values in all, their mean, their weighted unbiased variance."""
        with torch.no_grad():
            self.count.add_(n)
            self.mean.add_(mean.detach().double() * n)
            self.m2.add_(unbiased_var.detach().double() * n)
            self.forwards.add_(1)

    def result(self) -> tuple[Tensor, Tensor] | None:
        """The mean and unbiased variance to fold in (None when nothing was added)."""
        if int(self.forwards) == 0:
            return None
        if self.within:
            return self.mean / self.count, self.m2 / self.count
        return self.mean.clone(), BF.unbiased(self.m2 / self.count, self.count)
