"""The pure functional core: every BatchNorm formula of bnkit, on the statistics it is given.

Nothing here decides *which* statistics to use (a managed layer's forward does that from its
policy). Wherever ``nn.BatchNorm`` can express a behaviour these functions run PyTorch's own
kernels (``torch.batch_norm``, ``torch.batch_norm_update_stats``), so results are bit-for-bit
the same.

For each channel, with ``n`` values x₁ … xₙ per channel in the batch (``N·H·W`` for a 4D
input; :func:`values_per_channel`), BatchNorm computes::

    μ_B = (1/n) Σᵢ xᵢ          σ²_B = (1/n) Σᵢ (xᵢ − μ_B)²     (the biased variance)

    yᵢ = (xᵢ − μ) / √(σ² + ε) · γ + β

where (μ, σ²) are either the batch statistics (μ_B, σ²_B) or the running statistics
(``running_mean``, ``running_var``), γ is ``weight``, β is ``bias`` and ε is ``eps``. An
update of the running statistics with factor ``f`` (:func:`ema`) is::

    running_mean ← (1 − f) · running_mean + f · μ_B
    running_var  ← (1 − f) · running_var  + f · σ²_B · n/(n − 1)

so ``running_var`` stores the *unbiased* variance (:func:`unbiased`) while normalization uses
the biased one. The factor is ``momentum`` for an EMA update (PyTorch's convention: the weight
of the new batch, so 0.1 in PyTorch is 0.9 in Keras) and ``1/k`` on the ``k``-th update for a
cumulative one.

Statistics of several batches (micro-batches held back for one optimizer step, the batches
of a recalibration pass, ranks) pool exactly (:func:`pool`, :func:`pool_into`): with ``n_b``
values, mean ``m_b`` and biased variance ``v_b`` per batch ``b`` and ``N = Σ_b n_b``::

    μ  = (1/N) Σ_b n_b · m_b
    σ² = (1/N) Σ_b n_b · (v_b + (m_b − μ)²)

the statistics of the batches concatenated.

Padded sequences (:func:`masked_moments`) count only the valid positions in ``n``, the
means and the variances.

The strategies beyond plain BatchNorm:

**Batch renormalization** (Ioffe 2017; :func:`renorm_correction`, :func:`renorm_limits`), with
σ = √(σ² + ε) for the batch (σ_B) and for the running statistics (σ̂, μ̂)::

    r = clip(σ_B / σ̂, 1/r_max, r_max)      d = clip((μ_B − μ̂) / σ̂, −d_max, d_max)

    y = ((x − μ_B) / σ_B · r + d) · γ + β

with no gradient through ``r`` and ``d``; ``r_max = 1, d_max = 0`` is plain BatchNorm. The
limits can start at (1, 0) for ``warmup`` updates and rise linearly to (``r_max``, ``d_max``)
over ``ramp`` updates.

**Ghost batches** (:func:`ghost_normalize`): a batch of ``N`` samples is split into
``G = ⌈N / g⌉`` consecutive groups as ``torch.chunk`` splits it (17 with ``g = 16`` gives 9 and
8; 40 gives 14, 14 and 12), and each group is normalized with its own statistics. The running
statistics update once per forward with the size-weighted mean of the groups' means and of
their unbiased variances (Keras's virtual batches): the variance inference uses is then the
within-group variance training normalized with.

**Prior mixing** (Schneider et al. 2020; :func:`prior_weight`, :func:`prior_mix`) normalizes
with::

    μ = w · μ̂ + (1 − w) · μ_B      σ² = w · σ̂² + (1 − w) · σ²_B      w = N / (N + n)

for a prior strength ``N`` and a batch of ``n`` samples: ``N = 0`` is batch statistics,
``N = ∞`` running statistics. Gradients flow through the batch part.
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
