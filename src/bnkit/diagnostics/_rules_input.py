r"""Rules that need an example input: what each layer saw during one forward.

``domain_shift`` compares, per channel, the Gaussian of the batch
:math:`N(\mu_B, \sigma_B^2)` with the Gaussian of the running statistics
:math:`N(\hat\mu, \hat\sigma^2)` by their symmetric Kullback-Leibler divergence (Jeffreys)

.. math::

    J = \tfrac12\left(\frac{s_B}{\hat s} + \frac{\hat s}{s_B} - 2\right)
      + \tfrac12\,(\mu_B - \hat\mu)^2\left(\frac{1}{s_B} + \frac{1}{\hat s}\right),
    \qquad s_B = \sigma_B^2 + \epsilon,\ \hat s = \hat\sigma^2 + \epsilon

(:math:`\sigma_B^2` unbiased, :math:`\epsilon` the layer's eps), and averages :math:`J` over the
channels of a layer. :math:`J` is 0 for identical statistics, :math:`\Delta^2` for a mean shifted
by :math:`\Delta` standard deviations, and 0.25 for a variance off by a factor of 2. A batch of
:math:`n` values drawn from the running distribution gives :math:`J \approx 2/n` from sampling
alone for independent values; in practice values inside one sample are correlated, so the
noise falls with the number of samples instead (see :data:`DOMAIN_MIN_SAMPLES`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bnkit.diagnostics._example import Call
from bnkit.diagnostics._facts import LayerFacts, never_updated
from bnkit.diagnostics._text import where
from bnkit.diagnostics.findings import Context, Finding, Severity

__all__ = [
    "DOMAIN_MIN_SAMPLES",
    "DOMAIN_THRESHOLD",
    "domain_shift",
    "jeffreys",
    "shared_layer",
    "tiny_batch",
]

DOMAIN_THRESHOLD = 0.5
"""Default ``domain_threshold`` of :func:`bnkit.check`: a mean symmetric KL per channel of 0.5,
e.g. every channel's mean off by 0.7 standard deviations, or its variance off by a factor 3."""

DOMAIN_MIN_SAMPLES = 16
"""``domain_shift`` needs this many samples (size of dim 0) in the example batch. Values inside
one sample are correlated, so the sampling noise of the batch statistics falls with the number
of samples, not of values: with 8 samples, batches of the training distribution itself reach
the default threshold in the deepest layers (benchmarks/domain_shift_threshold.py)."""


def jeffreys(
    mean_a: Tensor, var_a: Tensor, mean_b: Tensor, var_b: Tensor, eps: float | Tensor
) -> Tensor:
    """Per-channel symmetric KL divergence between N(mean_a, var_a+eps) and N(mean_b, var_b+eps)."""
    sa, sb = var_a + eps, var_b + eps
    return 0.5 * (sa / sb + sb / sa - 2) + 0.5 * (mean_a - mean_b) ** 2 * (1 / sa + 1 / sb)


def _batchy(calls: list[Call]) -> list[Call]:
    return [c for c in calls if c.batch or c.updates]


def tiny_batch(ctx: Context) -> list[Finding]:
    assert ctx.probe is not None
    errors: list[tuple[str, Call]] = []
    warnings: list[tuple[str, Call]] = []
    for name, calls in ctx.probe.calls.items():
        used = _batchy(calls)
        if not used:
            continue
        worst = min(used, key=lambda c: c.n)
        if worst.n <= 1:
            errors.append((name, worst))
        elif worst.n < ctx.min_values:
            warnings.append((name, worst))
    every = [f.name for f in ctx.layers]
    out = []
    for severity, group in ((Severity.ERROR, errors), (Severity.WARNING, warnings)):
        if not group:
            continue
        names = [n for n, _ in group]
        shown = "; ".join(f"{n!r}: {c.n} (input {c.shape})" for n, c in group[:6])
        if severity is Severity.ERROR:
            stopped = ctx.probe.failed_in
            why = (
                "the variance of a single value is undefined: a forward that needs batch "
                "statistics or an update raises ('Expected more than 1 value per channel')"
                + (f" — the example forward stopped in {stopped!r}" if stopped else "")
            )
        else:
            why = (
                f"statistics of fewer than {ctx.min_values} values are noisy: each output "
                "depends strongly on the other samples, gradients are noisy, and the running "
                "statistics take noisy steps"
            )
        out.append(
            Finding(
                kind="tiny_batch",
                severity=severity,
                layers=tuple(names),
                what=f"batch statistics from very few values per channel: {shown}",
                why=why,
                fix=(
                    "use batches with more values per channel, or normalize with the running "
                    f"statistics: bnkit.freeze(model, affine=False{where(names, every)}) "
                    "('frozen_stats')"
                ),
            )
        )
    return out


def _distance(f: LayerFacts, call: Call) -> float | None:
    if call.mean is None or call.var is None or call.running_mean is None:
        return None
    if call.running_var is None or call.n < 2 or never_updated(f.layer):
        return None
    if not call.shape or call.shape[0] < DOMAIN_MIN_SAMPLES:
        return None
    rm, rv = call.running_mean, call.running_var
    if rm.shape != call.mean.shape or not bool(torch.isfinite(rm).all() & torch.isfinite(rv).all()):
        return None
    if bool((rv < 0).any()) or not bool(torch.isfinite(call.mean).all()):
        return None
    eps = float(getattr(f.layer, "eps", 1e-5))
    value = float(jeffreys(call.mean, call.var, rm, rv, eps).mean())
    return value if math.isfinite(value) else None


def domain_shift(ctx: Context) -> list[Finding]:
    assert ctx.probe is not None
    by_name = {f.name: f for f in ctx.layers}
    scored: list[tuple[float, str]] = []
    for name, calls in ctx.probe.calls.items():
        f = by_name.get(name)
        if f is None or not calls:
            continue
        d = _distance(f, calls[0])
        if d is not None and d > ctx.domain_threshold:
            scored.append((d, name))
    if not scored:
        return []
    scored.sort(reverse=True)
    names = [n for _, n in scored]
    shown = ", ".join(f"{n!r} {d:.2f}" for d, n in scored[:6])
    more = f" and {len(scored) - 6} more" if len(scored) > 6 else ""
    return [
        Finding(
            kind="domain_shift",
            severity=Severity.WARNING,
            layers=tuple(names),
            what=(
                f"the example batch's statistics are far from the running statistics in "
                f"{len(names)} of {len(ctx.layers)} layers: {shown}{more} (mean symmetric KL "
                f"per channel; threshold {ctx.domain_threshold:g})"
            ),
            why=(
                "normalizing with running statistics (eval()) shifts and scales this data "
                "away from what the next layers were trained on; most of the accuracy lost "
                "under a distribution shift is lost here"
            ),
            fix=(
                "re-estimate the running statistics on data like this: "
                "bnkit.recalibrate(model, target_data); or let them follow the data: "
                "bnkit.apply(model, 'adapt')"
            ),
        )
    ]


def shared_layer(ctx: Context) -> list[Finding]:
    assert ctx.probe is not None
    active: list[tuple[str, int]] = []
    passive: list[tuple[str, int]] = []
    for name, calls in ctx.probe.calls.items():
        if len(calls) > 1:
            (active if _batchy(calls) else passive).append((name, len(calls)))
    every = [f.name for f in ctx.layers]
    out = []
    for severity, group in ((Severity.WARNING, active), (Severity.INFO, passive)):
        if not group:
            continue
        names = [n for n, _ in group]
        counts = "; ".join(f"{n!r} {k} times" for n, k in group[:6])
        why = (
            "each call normalizes its own input with its own batch statistics and updates the "
            "same running statistics, which end up mixing every call site, while eval() "
            "normalizes all call sites with that one mixture"
            if severity is Severity.WARNING
            else "they normalize with fixed running statistics, so sharing them is harmless"
        )
        out.append(
            Finding(
                kind="shared_layer",
                severity=severity,
                layers=tuple(names),
                what=f"BatchNorm modules called more than once per forward: {counts}",
                why=why,
                fix=(
                    "give each call site its own BatchNorm layer (copy.deepcopy(layer)); if "
                    "sharing is intended, fix the statistics: "
                    f"bnkit.freeze(model, affine=False{where(names, every)})"
                ),
            )
        )
    return out
