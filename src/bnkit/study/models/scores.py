r"""Scores of one cell: accuracy, the share of non-finite outputs, calibration error.

Accuracy is the share of correct top-1 predictions (a sample whose logits hold NaN or Inf, from
a model that diverged, counts as wrong; ``nonfinite`` reports their share). The expected
calibration error uses 15 equal-width bins of the confidence :math:`\hat p_i = \max_k p_{ik}`:

.. math::

    \mathrm{ECE} = \sum_{b=1}^{15} \frac{|B_b|}{N}\,
        \Big|\operatorname{acc}(B_b) - \operatorname{conf}(B_b)\Big|

with bin :math:`b` holding the samples with :math:`\hat p_i \in ((b-1)/15,\ b/15]`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["ECE_BINS", "accuracy", "ece", "nonfinite"]

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
