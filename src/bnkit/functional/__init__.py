r"""The pure functional core: every BatchNorm formula of bnkit, on the statistics it is given.

Nothing here decides *which* statistics to use (a managed layer's forward does that from its
policy). Wherever ``nn.BatchNorm`` can express a behaviour these functions run PyTorch's own
kernels (``torch.batch_norm``, ``torch.batch_norm_update_stats``), so results are bit-for-bit
the same.

For each channel :math:`c`, with :math:`n` values per channel in the batch (``N·H·W`` for a 4D
input; :func:`values_per_channel`), BatchNorm computes

.. math::

    \mu_B = \frac{1}{n}\sum_i x_i, \qquad
    \sigma^2_B = \frac{1}{n}\sum_i (x_i - \mu_B)^2 \quad\text{(biased)}

    y_i = \frac{x_i - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta

where :math:`(\mu, \sigma^2)` are either the batch statistics or the running statistics
(``running_mean``, ``running_var``). An update of the running statistics with factor :math:`f`
(:func:`ema`) is

.. math::

    \hat\mu \leftarrow (1 - f)\,\hat\mu + f\,\mu_B, \qquad
    \hat\sigma^2 \leftarrow (1 - f)\,\hat\sigma^2 + f\,\sigma^2_B\,\frac{n}{n - 1}

so ``running_var`` stores the *unbiased* variance (:func:`unbiased`) while normalization uses
the biased one. The factor is ``momentum`` for an EMA update (PyTorch's convention: the weight
of the new batch, so 0.1 in PyTorch is 0.9 in Keras) and :math:`1/k` on the :math:`k`-th update
for a cumulative one.

Statistics of several batches (micro-batches held back for one optimizer step, the batches
of a recalibration pass, ranks) pool exactly (:func:`pool`, :func:`pool_into`): with
:math:`n_b` values, mean :math:`m_b` and biased variance :math:`v_b` per batch and
:math:`N = \sum_b n_b`,

.. math::

    \mu = \frac{1}{N}\sum_b n_b m_b, \qquad
    \sigma^2 = \frac{1}{N}\sum_b n_b \left(v_b + (m_b - \mu)^2\right)

the statistics of the batches concatenated.

Padded sequences (:func:`masked_moments`) count only the valid positions in :math:`n`, the
means and the variances.

The strategies beyond plain BatchNorm:

* **Batch renormalization** (Ioffe 2017; :func:`renorm_correction`, :func:`renorm_limits`)

  .. math::

      r = \operatorname{clip}_{[1/r_{max},\, r_{max}]}\frac{\sigma_B}{\hat\sigma}, \quad
      d = \operatorname{clip}_{[-d_{max},\, d_{max}]}\frac{\mu_B - \hat\mu}{\hat\sigma}, \quad
      y = \Big(\frac{x - \mu_B}{\sigma_B}\, r + d\Big)\gamma + \beta

  with :math:`\sigma = \sqrt{\sigma^2 + \epsilon}` and no gradient through :math:`r, d`;
  :math:`r_{max} = 1, d_{max} = 0` is plain BatchNorm. The limits can start at (1, 0) for
  ``warmup`` updates and rise linearly to (:math:`r_{max}, d_{max}`) over ``ramp`` updates.
* **Ghost batches** (:func:`ghost_normalize`): a batch of :math:`N` samples is split into
  :math:`G = \lceil N / g \rceil` consecutive groups as ``torch.chunk`` splits it (17 with
  :math:`g = 16` gives 9 and 8; 40 gives 14, 14 and 12), and each group is normalized with its
  own statistics. The running statistics update once per forward with the size-weighted mean
  of the groups' means and of their unbiased variances (Keras's virtual batches): the variance
  inference uses is then the within-group variance training normalized with.
* **Prior mixing** (Schneider et al. 2020; :func:`prior_weight`, :func:`prior_mix`) normalizes
  with :math:`\mu = w\hat\mu + (1-w)\mu_B,\ \sigma^2 = w\hat\sigma^2 + (1-w)\sigma^2_B` where
  :math:`w = N/(N + n)` for a prior strength :math:`N` and a batch of :math:`n` samples:
  :math:`N = 0` is batch statistics, :math:`N = \infty` running statistics. Gradients flow
  through the batch part.
"""

from bnkit.functional.normalize import (
    affine_normalize,
    normalize,
    normalize_on_stats,
    normalize_with_batch,
    snapshot,
    transformed,
    update_running_stats,
)
from bnkit.functional.stats import (
    batch_stats,
    ema,
    masked_moments,
    moments,
    pool,
    pool_into,
    unbiased,
    values_per_channel,
)
from bnkit.functional.strategies import (
    ghost_normalize,
    ghost_sizes,
    ghost_update_stats,
    mixed_normalize,
    prior_mix,
    prior_weight,
    renorm_correction,
    renorm_fold,
    renorm_limits,
)

__all__ = [
    "affine_normalize",
    "batch_stats",
    "ema",
    "ghost_normalize",
    "ghost_sizes",
    "ghost_update_stats",
    "masked_moments",
    "mixed_normalize",
    "moments",
    "normalize",
    "normalize_on_stats",
    "normalize_with_batch",
    "pool",
    "pool_into",
    "prior_mix",
    "prior_weight",
    "renorm_correction",
    "renorm_fold",
    "renorm_limits",
    "snapshot",
    "transformed",
    "unbiased",
    "update_running_stats",
    "values_per_channel",
]
