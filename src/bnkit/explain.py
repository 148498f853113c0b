"""``bnkit.explain``: every number of one BatchNorm forward, and why.

The numbers come from :mod:`bnkit.reference` (float64, step by step); the layer's real output
is computed on a copy, so explaining never changes the layer, and the largest difference
between the two is reported.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from bnkit.layers.state import state_of
from bnkit.reference import ReferenceStep, reference_step

__all__ = ["Explanation", "explain"]


@dataclasses.dataclass(frozen=True)
class Explanation:
    """What a BatchNorm layer does with one input. ``str()`` renders it; ``to_dict()`` for JSON."""

    layer: str
    step: ReferenceStep
    output: Tensor
    """The layer's real output for the input."""
    max_abs_diff: float
    """Largest ``|reference - real output|``."""
    max_channels: int = 8
    max_values: int = 9

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers (JSON-ready)."""
        s = self.step

        def vec(t: Tensor | None) -> list[float] | None:
            return None if t is None else [float(v) for v in t.flatten()]

        channels = []
        for c in range(s.mean.numel()):
            channels.append(
                {
                    "channel": c,
                    "batch_mean": float(s.batch_mean[c]),
                    "batch_var": float(s.batch_var[c]),
                    "mean": float(s.mean[c]),
                    "var": float(s.var[c]),
                    "inv_std": float(s.inv_std[c]),
                    "weight": None if s.weight is None else float(s.weight[c]),
                    "bias": None if s.bias is None else float(s.bias[c]),
                    "running_mean": _at(s.running_mean, c),
                    "running_var": _at(s.running_var, c),
                    "new_running_mean": _at(s.new_running_mean, c),
                    "new_running_var": _at(s.new_running_var, c),
                }
            )
        return {
            "layer": self.layer,
            "policy": repr(s.policy),
            "phase": "train" if s.training else "eval",
            "normalized_with": s.used,
            "why": s.why,
            "values_per_channel": s.n,
            "eps": s.eps,
            "update": {
                "happens": s.updated,
                "rule": s.update_rule,
                "factor": s.factor,
                "skipped_nonfinite": s.skipped,
                "num_batches_tracked": [s.num_batches_tracked, s.new_num_batches_tracked],
            },
            "affine_trainable": s.affine_trainable,
            "details": {k: _plain(v) for k, v in s.details.items()},
            "channels": channels,
            "normalized": vec(s.normalized),
            "output": vec(self.output),
            "max_abs_diff": self.max_abs_diff,
        }

    def __str__(self) -> str:
        s = self.step
        lines = [
            f"{self.layer} — policy {s.policy!r}, in {'train' if s.training else 'eval'}()",
            f"normalizes with {_USED[s.used]}: {s.why}",
            f"n = {s.n} values per channel; eps = {s.eps:g}",
            *_header(s),
            "",
            "  y = (x − mean) / √(var + eps) · γ + β      (var is the biased variance)",
        ]
        shown = min(s.mean.numel(), self.max_channels)
        outputs = _per_channel(self.output.detach().double())
        for c in range(shown):
            w = "1 (affine=False)" if s.weight is None else _f(s.weight[c])
            b = "0" if s.bias is None else _f(s.bias[c])
            lines += [
                "",
                f"channel {c}",
                f"  x              = {_vals(_per_channel(s.input)[c], self.max_values)}",
                *_stat_lines(s, c, self.max_values),
                f"  γ = {w}, β = {b}",
                f"  y = γ·x̂ + β   = {_vals(outputs[c], self.max_values)}",
            ]
        if s.mean.numel() > shown:
            lines.append(f"\n… {s.mean.numel() - shown} more channels (see to_dict())")
        lines += ["", *self._update_lines(shown)]
        trains = "trainable" if s.affine_trainable else "frozen (no gradient)"
        lines += [
            f"gamma/beta: {trains}",
            f"largest |reference − layer output| {_bound(self.max_abs_diff)}",
        ]
        return "\n".join(lines)

    def _update_lines(self, shown: int) -> list[str]:
        s = self.step
        if s.skipped:
            return ["running statistics: update skipped (the batch has NaN/Inf statistics)"]
        if not s.updated:
            return ["running statistics: no update on this forward"]
        f = s.factor
        old_m, old_v = s.running_mean, s.running_var
        new_m, new_v = s.new_running_mean, s.new_running_var
        assert f is not None
        assert old_m is not None
        assert old_v is not None
        assert new_m is not None
        assert new_v is not None
        what = (
            f"EMA, momentum {f:g}" if s.update_rule == "ema" else f"cumulative, factor 1/{1 / f:g}"
        )
        lines = [
            f"running statistics update ({what}); num_batches_tracked "
            f"{s.num_batches_tracked} → {s.new_num_batches_tracked}",
        ]
        if s.used == "ghost":
            lines.append(
                "  with the size-weighted mean of the ghost batches' means and of their unbiased "
                "variances var_g · n_g/(n_g−1)"
            )
        else:
            lines.append(
                f"  running_var stores the unbiased variance: var · n/(n−1) = var · {s.n}/{s.n - 1}"
            )
        for c in range(shown):
            if s.used == "ghost":
                var_term = _g(s.update_var[c])
            else:
                var_term = f"{_g(s.batch_var[c])}·{s.n}/{s.n - 1}"
            lines += [
                f"  channel {c}: running_mean {_g(old_m[c])} → "
                f"(1−{f:g})·{_g(old_m[c])} + {f:g}·{_g(s.update_mean[c])} = {_g(new_m[c])}",
                f"             running_var  {_g(old_v[c])} → "
                f"(1−{f:g})·{_g(old_v[c])} + {f:g}·{var_term} = {_g(new_v[c])}",
            ]
        return lines


_USED = {
    "batch": "batch statistics",
    "running": "running statistics",
    "renorm": "batch renormalization",
    "ghost": "ghost-batch statistics",
    "prior": "running statistics mixed with batch statistics",
}


def _header(s: ReferenceStep) -> list[str]:
    d = s.details
    if s.used == "renorm":
        return [
            f"r clipped to [1/{d['r_limit']:g}, {d['r_limit']:g}], d to "
            f"[−{d['d_limit']:g}, {d['d_limit']:g}] (no gradient through r and d)"
        ]
    if s.used == "ghost":
        return [f"ghost batches of {s.policy.ghost_size} samples: {len(d['sizes'])} groups"]
    if s.used == "prior":
        p = s.policy.prior_strength
        return [f"prior weight w = N/(N+n) = {p:g}/({p:g}+{d['samples']}) = {d['weight']:.6g}"]
    return []


def _stat_lines(s: ReferenceStep, c: int, limit: int) -> list[str]:
    x_hat = _vals(_per_channel(s.normalized)[c], limit)
    d = s.details
    if s.used == "ghost":
        means = ", ".join(_g(v) for v in d["means"][:, c])
        variances = ", ".join(_g(v) for v in d["vars"][:, c])
        return [
            f"  mean per ghost = [{means}]",
            f"  var per ghost  = [{variances}]",
            f"  x̂ = (x − mean_g)/√(var_g + eps) within each ghost batch = {x_hat}",
        ]
    label = "batch" if s.used == "renorm" else s.used
    lines = [
        f"  mean           = {_g(s.mean[c])}  ({label} statistic)",
        f"  var            = {_g(s.var[c])}  ({label} statistic)",
    ]
    if s.used == "prior" and s.running_mean is not None and s.running_var is not None:
        w = d["weight"]
        lines = [
            f"  mean = w·running_mean + (1−w)·batch_mean = {w:.4g}·{_g(s.running_mean[c])} + "
            f"{1 - w:.4g}·{_g(s.batch_mean[c])} = {_g(s.mean[c])}",
            f"  var  = w·running_var + (1−w)·batch_var = {w:.4g}·{_g(s.running_var[c])} + "
            f"{1 - w:.4g}·{_g(s.batch_var[c])} = {_g(s.var[c])}",
        ]
    lines.append(f"  1/√(var + eps) = {_g(s.inv_std[c])}")
    if s.used == "renorm":
        lines += [
            f"  r = clip(√(var + eps)/√(running_var + eps)) = {_g(d['r'][c])}, "
            f"d = clip((mean − running_mean)/√(running_var + eps)) = {_g(d['d'][c])}",
            f"  x̂ = (x − mean)/√(var + eps)·r + d = {x_hat}",
        ]
    else:
        lines.append(f"  x̂ = (x − mean)/√(var + eps) = {x_hat}")
    return lines


def explain(layer: nn.Module, x: Tensor, *, name: str | None = None) -> Explanation:
    """Explain what ``layer`` does with input ``x`` in its current phase; the layer is unchanged.

    Args:
        layer: a BatchNorm layer (managed by bnkit or not).
        x: an input the layer accepts.
        name: how to call the layer in the text (default: its bnkit name or class).

    Examples:
        >>> import torch, torch.nn as nn, bnkit
        >>> bn = nn.BatchNorm1d(2)
        >>> e = bnkit.explain(bn, torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
        >>> e.step.used, [round(v, 3) for v in e.output[:, 0].tolist()]
        ('batch', [-1.0, 1.0])
    """
    step = reference_step(layer, x)
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        real = twin(x)
    diff = float((real.double() - step.output.detach()).abs().max()) if real.numel() else 0.0
    state = state_of(layer)
    known = state.name if state is not None else vars(layer).get("_bnkit_name", "")
    label = name or known or type(layer).__name__
    return Explanation(
        layer=f"{type(layer).__name__} {label!r}", step=step, output=real, max_abs_diff=diff
    )


def _per_channel(t: Tensor) -> Tensor:
    return t.detach().transpose(0, 1).reshape(t.shape[1], -1)


def _bound(diff: float) -> str:
    """An order of magnitude, stable across machines: ``< 1e-07``."""
    if diff == 0:
        return "= 0"
    if not math.isfinite(diff):
        return f"= {diff}"
    return f"< 1e{math.floor(math.log10(diff)) + 1:+03d}".replace("+", "")


def _plain(value: object) -> object:
    return value.tolist() if isinstance(value, Tensor) else value


def _at(t: Tensor | None, c: int) -> float | None:
    return None if t is None else float(t[c])


def _f(v: Tensor | float) -> str:
    return f"{float(v):.4f}"


def _g(v: Tensor | float) -> str:
    return f"{float(v):.6g}"


def _vals(t: Tensor, limit: int) -> str:
    items = [f"{float(v):.4f}" for v in t[:limit]]
    more = f", … ({t.numel()} values)" if t.numel() > limit else ""
    return "[" + ", ".join(items) + more + "]"
