r"""Scores of one cell and their summaries over seeds.

Accuracy is the share of correct top-1 predictions (a sample whose logits hold NaN or Inf, from
a model that diverged, counts as wrong; ``nonfinite`` reports their share). The expected
calibration error uses 15 equal-width bins of the confidence :math:`\hat p_i = \max_k p_{ik}`:

.. math::

    \mathrm{ECE} = \sum_{b=1}^{15} \frac{|B_b|}{N}\,
        \Big|\operatorname{acc}(B_b) - \operatorname{conf}(B_b)\Big|

with bin :math:`b` holding the samples with :math:`\hat p_i \in ((b-1)/15,\ b/15]`. Over
:math:`n` seeds a number is reported as mean ± the half-width of its 95% confidence interval
from Student's t distribution, :math:`t_{0.975,\,n-1}\, s/\sqrt{n}` (sample standard
deviation :math:`s`); with one seed the half-width is ``nan`` (unknown).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["ECE_BINS", "Summary", "accuracy", "ece", "nonfinite", "summarize", "t_quantile"]

ECE_BINS = 15


def nonfinite(logits: Tensor) -> float:
    """Share of samples with a NaN or infinite logit (a model that diverged)."""
    return float((~torch.isfinite(logits).all(dim=1)).double().mean())


def accuracy(logits: Tensor, labels: Tensor) -> float:
    """Share of samples whose largest logit is the label; a sample with a NaN/Inf logit counts
    as wrong (it has no prediction)."""
    finite = torch.isfinite(logits).all(dim=1)
    return float(((logits.argmax(dim=1) == labels) & finite).double().mean())


def ece(logits: Tensor, labels: Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error with ``bins`` equal-width confidence bins, over the samples
    with finite logits (``nan`` when there are none)."""
    finite = torch.isfinite(logits).all(dim=1)
    if not bool(finite.any()):
        return math.nan
    logits, labels = logits[finite], labels[finite]
    probs = logits.double().softmax(dim=1)
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).double()
    # bin b holds confidences in ((b-1)/bins, b/bins]; a confidence of exactly 0 cannot occur
    idx = (conf * bins).ceil().clamp(1, bins).long() - 1
    # |B_b|·|acc(B_b) − conf(B_b)| = |Σ_{i∈B_b} (correct_i − conf_i)|
    total = torch.zeros(bins, dtype=torch.float64).index_add_(0, idx, correct - conf)
    return float(total.abs().sum() / conf.numel())


class Summary(tuple[float, float, int]):
    """``(mean, half-width of the 95% CI, number of values)``; prints as ``mean ± ci``."""

    __slots__ = ()

    def __new__(cls, mean: float, ci: float, n: int) -> Summary:
        return super().__new__(cls, (mean, ci, n))

    @property
    def mean(self) -> float:
        return self[0]

    @property
    def ci(self) -> float:
        return self[1]

    @property
    def n(self) -> int:
        return self[2]

    def percent(self, digits: int = 1) -> str:
        """``"97.3 ± 0.4"`` for accuracies in [0, 1]."""
        if math.isnan(self.mean):
            return "–"
        if math.isnan(self.ci):
            return f"{100 * self.mean:.{digits}f}"
        return f"{100 * self.mean:.{digits}f} ± {100 * self.ci:.{digits}f}"


def t_quantile(dof: int, q: float = 0.975) -> float:
    """The ``q`` quantile of Student's t distribution with ``dof`` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(q, dof))


def summarize(values: Sequence[float]) -> Summary:
    """Mean and 95% t-interval half-width of ``values`` (one per seed)."""
    n = len(values)
    if n == 0:
        return Summary(math.nan, math.nan, 0)
    mean = math.fsum(values) / n
    if n == 1:
        return Summary(mean, math.nan, 1)
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return Summary(mean, t_quantile(n - 1) * math.sqrt(var / n), n)
