"""Rules about the layers around BatchNorm."""

from __future__ import annotations

import itertools

import torch.nn as nn
from torch.nn.modules.conv import _ConvNd

from bnkit.diagnostics.findings import Context, Finding, Severity
from bnkit.layers.select import is_bn_layer

__all__ = ["conv_bias"]


def _out_features(module: nn.Module) -> int | None:
    if isinstance(module, _ConvNd):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return None


def _sequential_pairs(model: nn.Module) -> set[tuple[str, str]]:
    pairs = set()
    for prefix, module in model.named_modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (a_name, a), (b_name, b) in itertools.pairwise(children):
            width = _out_features(a)
            if (
                width is not None
                and getattr(a, "bias", None) is not None
                and is_bn_layer(b)
                and getattr(b, "num_features", None) == width
            ):
                dot = f"{prefix}." if prefix else ""
                pairs.add((f"{dot}{a_name}", f"{dot}{b_name}"))
    return pairs


def conv_bias(ctx: Context) -> list[Finding]:
    pairs = _sequential_pairs(ctx.model)
    if ctx.probe is not None:
        for bn, calls in ctx.probe.calls.items():
            pairs.update((c.after, bn) for c in calls if c.after is not None)
    if not pairs:
        return []
    ordered = sorted(pairs, key=lambda p: p[1])
    shown = "; ".join(f"{a!r} → {b!r}" for a, b in ordered[:6])
    more = f" and {len(ordered) - 6} more" if len(ordered) > 6 else ""
    return [
        Finding(
            kind="conv_bias_before_bn",
            severity=Severity.INFO,
            layers=tuple(sorted({b for _, b in ordered})),
            what=f"a layer with a bias feeds BatchNorm directly: {shown}{more}",
            why=(
                "BatchNorm subtracts a per-channel mean right after, so a per-channel bias "
                "cancels with batch statistics (its gradient is 0) and beta plays its role "
                "otherwise: it only costs memory and an add"
            ),
            fix=(
                "build those layers with bias=False (to keep pretrained weights, fold the bias "
                "into the statistics: running_mean -= bias, then drop it)"
            ),
        )
    ]
