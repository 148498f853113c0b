r"""How a recalibration pass turns per-batch statistics into running statistics.

During the pass every selected layer normalizes with its batch statistics, as in training. For
each batch :math:`b` a layer sees, with :math:`n_b` values per channel (``N·H·W`` for a 4D
input), batch mean :math:`m_b` and biased variance :math:`v_b`, an estimator keeps a few
per-channel sums and finally gives ``running_mean`` :math:`\hat\mu` and ``running_var``
:math:`\hat\sigma^2` (unbiased, as ``nn.BatchNorm`` stores it). With :math:`B` batches and
:math:`N = \sum_b n_b`:

``population`` — the statistics of all the data concatenated, whatever the batching:

.. math::

    \hat\mu = \frac{1}{N}\sum_b n_b\, m_b, \qquad
    \hat\sigma^2 = \frac{1}{N - 1}\sum_b n_b \left(v_b + (m_b - \hat\mu)^2\right)

accumulated in float64 with Chan's pairwise update (stable: no difference of large sums).

``batch_mean`` — equal weight per batch, unbiased variance per batch (fvcore's
``_MeanOfBatchVarianceEstimator``, the BatchNorm paper's inference statistics):

.. math::

    \hat\mu = \frac{1}{B}\sum_b m_b, \qquad
    \hat\sigma^2 = \frac{1}{B}\sum_b \frac{n_b}{n_b - 1}\, v_b

``cumulative`` — the same numbers as ``batch_mean`` in exact arithmetic, computed as
``torch.optim.swa_utils.update_bn`` computes them: the layer's own kernel updates its buffers
with factor :math:`1/k` on the :math:`k`-th batch, in the buffers' dtype, so a single-process
pass is bit-for-bit ``update_bn``.

Across processes, each rank contributes the vector :meth:`Estimator.local`; :meth:`combine`
merges the vectors of all ranks (one row each) in rank order, so every rank ends with the
same numbers, equal to a single process that saw all the data.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import torch
from torch import Tensor

from bnkit.functional.stats import pool, pool_into
from bnkit.policy import Normalize, Phase, Policy, Update

__all__ = ["ESTIMATORS", "BatchMean", "Cumulative", "Estimator", "Population"]


class Estimator(abc.ABC):
    """Per-layer accumulator of one recalibration pass (one instance per layer and rank)."""

    name: ClassVar[str]
    policy: ClassVar[Policy]
    """What the layer does during the pass: normalize with batch statistics and update its
    buffers so that after each batch they hold what :meth:`update` reads."""

    def __init__(self, channels: int, device: torch.device) -> None:
        self.channels = channels
        self.device = device
        self.batches = 0

    @abc.abstractmethod
    def next_factor(self) -> float:
        """The update factor the layer's buffers take from the next batch (see ``policy``)."""

    @abc.abstractmethod
    def update(self, n: int, mean: Tensor, var: Tensor) -> None:
        """Take one batch: ``n`` values per channel; the layer's buffers after the batch."""

    @abc.abstractmethod
    def local(self) -> Tensor:
        """This rank's sums as one float64 vector of :meth:`size` elements."""

    @classmethod
    def size(cls, channels: int) -> int:
        """Length of :meth:`local` for a layer with ``channels`` channels."""
        return 2 + 2 * channels

    @classmethod
    @abc.abstractmethod
    def combine(cls, parts: Tensor) -> tuple[Tensor, Tensor, int]:
        """Merge one :meth:`local` row per rank into (running_mean, running_var, batches)."""


def _split(parts: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    channels = (parts.shape[1] - 2) // 2
    return parts[:, 0], parts[:, 1], parts[:, 2 : 2 + channels], parts[:, 2 + channels :]


class Population(Estimator):
    """Exact, sample-weighted statistics of all the data (see the module docstring)."""

    name = "population"
    policy = Policy(
        normalize=Normalize.BATCH, update=Update.EMA, momentum=1.0, update_in=Phase.ALWAYS
    )

    def __init__(self, channels: int, device: torch.device) -> None:
        super().__init__(channels, device)
        self.count = torch.zeros(1, dtype=torch.float64, device=device)
        self.mean = torch.zeros(channels, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(channels, dtype=torch.float64, device=device)

    def next_factor(self) -> float:
        return 1.0

    def update(self, n: int, mean: Tensor, var: Tensor) -> None:
        # The buffers hold the batch mean and the unbiased batch variance (factor 1).
        biased = var.to(torch.float64) * ((n - 1) / n)
        pool_into(self.count, self.mean, self.m2, n, mean.to(torch.float64), biased)
        self.batches += 1

    def local(self) -> Tensor:
        head = torch.tensor([float(self.batches)], dtype=torch.float64, device=self.device)
        return torch.cat([head, self.count, self.mean, self.m2])

    @classmethod
    def combine(cls, parts: Tensor) -> tuple[Tensor, Tensor, int]:
        batches, counts, means, m2s = _split(parts)
        total, mean, m2 = pool(counts, means, m2s)
        return mean, m2 / (total - 1), int(batches.sum().item())


class BatchMean(Estimator):
    """Mean of the per-batch mean and unbiased variance, equal weight per batch."""

    name = "batch_mean"
    policy = Population.policy

    def __init__(self, channels: int, device: torch.device) -> None:
        super().__init__(channels, device)
        self.sum_mean = torch.zeros(channels, dtype=torch.float64, device=device)
        self.sum_var = torch.zeros(channels, dtype=torch.float64, device=device)

    def next_factor(self) -> float:
        return 1.0

    def update(self, n: int, mean: Tensor, var: Tensor) -> None:
        self.sum_mean.add_(mean.to(torch.float64))
        self.sum_var.add_(var.to(torch.float64))
        self.batches += 1

    def local(self) -> Tensor:
        head = torch.tensor([self.batches, 0], dtype=torch.float64, device=self.device)
        return torch.cat([head, self.sum_mean, self.sum_var])

    @classmethod
    def combine(cls, parts: Tensor) -> tuple[Tensor, Tensor, int]:
        batches, _, sum_mean, sum_var = _split(parts)
        total = batches.sum()
        return sum_mean.sum(0) / total, sum_var.sum(0) / total, int(total.item())


class Cumulative(Estimator):
    """The layer's own cumulative update (factor ``1/k``), as ``update_bn`` runs it."""

    name = "cumulative"
    policy = Policy(normalize=Normalize.BATCH, update=Update.CUMULATIVE, update_in=Phase.ALWAYS)

    def __init__(self, channels: int, device: torch.device) -> None:
        super().__init__(channels, device)
        self.last: tuple[Tensor, Tensor] | None = None

    def next_factor(self) -> float:
        return 1.0 / (self.batches + 1)

    def update(self, n: int, mean: Tensor, var: Tensor) -> None:
        self.last = (mean, var)
        self.batches += 1

    def local(self) -> Tensor:
        out = torch.zeros(self.size(self.channels), dtype=torch.float64, device=self.device)
        out[0] = self.batches
        if self.last is not None:
            # k * value is exact in float64 for float32/16 values, so one rank gets them back.
            out[2 : 2 + self.channels] = self.last[0].to(torch.float64) * self.batches
            out[2 + self.channels :] = self.last[1].to(torch.float64) * self.batches
        return out

    @classmethod
    def combine(cls, parts: Tensor) -> tuple[Tensor, Tensor, int]:
        batches, _, weighted_mean, weighted_var = _split(parts)
        total = batches.sum()
        return weighted_mean.sum(0) / total, weighted_var.sum(0) / total, int(total.item())


ESTIMATORS: dict[str, type[Estimator]] = {
    cls.name: cls for cls in (Population, BatchMean, Cumulative)
}
"""The estimators by name, in the order the docs list them."""
