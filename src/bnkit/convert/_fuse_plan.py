"""What every fold must satisfy, whichever way the pairs were found, and the plan they make.

A pair ``(layer, batchnorm)`` folds when the BatchNorm layer is a fixed per-channel affine map
(running statistics, no update, no forward of its own, no hooks), the layer is a plain
Conv/ConvTranspose/Linear whose weight is its own (not computed, not shared with another
module, not used anywhere else in forward), and the channels agree. The finders in
:mod:`bnkit.convert._fuse_fx` and :mod:`bnkit.convert._fuse_trace` decide that the layer's
output reaches nothing but the BatchNorm layer, with its features in the BatchNorm's channel
dimension; this module checks the rest and keeps the reason for every layer left alone.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.modules.lazy import LazyModuleMixin

from bnkit.apply import policy_of
from bnkit.convert._fold import FOLDABLE, out_features
from bnkit.errors import LayerError
from bnkit.layers.adapters import route
from bnkit.layers.managed import original_class
from bnkit.layers.select import bn_layers

__all__ = ["FuseReport", "Planner", "fixed", "foldable"]


@dataclasses.dataclass(frozen=True)
class FuseReport:
    """What :func:`bnkit.fuse` does to a model.

    Attributes:
        fused: ``(layer, batchnorm)`` name pairs folded together.
        left: ``(batchnorm, reason)`` for every BatchNorm layer left as it is.
        untraced: ``(module, error)`` when torch.fx could not trace the model (then nothing is
            folded: pass an example input to find the pairs on a real forward).
        found_by: ``"fx"`` (the torch.fx graph) or ``"forward"`` (a forward of the example
            input, followed operation by operation).
    """

    fused: tuple[tuple[str, str], ...]
    left: tuple[tuple[str, str], ...]
    untraced: tuple[tuple[str, str], ...]
    found_by: str = "fx"

    def __str__(self) -> str:
        how = "the torch.fx graph" if self.found_by == "fx" else "a forward of the example input"
        lines = [
            f"fused {len(self.fused)} BatchNorm layer(s), left {len(self.left)} "
            f"(pairs found on {how})"
        ]
        lines += [f"  fused  {bn!r} into {layer!r}" for layer, bn in self.fused]
        lines += [f"  left   {bn!r}: {why}" for bn, why in self.left]
        lines += [f"  fx could not trace {name!r}: {err}" for name, err in self.untraced]
        return "\n".join(lines)


def fixed(bn: nn.Module) -> str | None:
    """Why ``bn`` is not a fixed affine map that folding can replace (None when it is)."""
    if not all(isinstance(getattr(bn, k, None), Tensor) for k in ("running_mean", "running_var")):
        return "has no running statistics: it always normalizes with batch statistics"
    try:
        policy = policy_of(bn)
    except LayerError as err:
        return f"its flags describe no policy ({err})"
    training = bn.training
    phase = "train()" if training else "eval()"
    if policy.uses_batch_stats(training):
        hint = "; call model.eval() first" if not policy.uses_batch_stats(False) else ""
        return f"normalizes with batch statistics in {phase}{hint}"
    if policy.updates(training):
        return f"updates its running statistics in {phase} ({policy.describe(training)})"
    cls = original_class(bn)
    if issubclass(cls, nn.modules.batchnorm._BatchNorm):
        r = route(cls)
        if not r.plain:
            return f"its class {cls.__name__} defines its own forward, which folding would drop"
        if r.adapter is not None and r.adapter.before is not None:
            return f"{cls.__name__} changes its input before normalizing it, so it cannot fold"
    if bn._forward_hooks or bn._forward_pre_hooks:
        return "has forward hooks, which folding would drop"
    return None


def foldable(layer: nn.Module) -> str | None:
    """Why ``layer`` cannot take a fold (None when it can)."""
    if isinstance(layer, LazyModuleMixin) and layer.has_uninitialized_params():
        return "is an unmaterialized lazy layer"
    base = next(c for c in FOLDABLE if isinstance(layer, c))
    if type(layer).forward is not base.forward or getattr(
        type(layer), "_conv_forward", None
    ) is not getattr(base, "_conv_forward", None):
        return f"its class {type(layer).__name__} has its own forward"
    if (
        torch.nn.utils.parametrize.is_parametrized(layer)
        or layer._forward_pre_hooks
        or layer._forward_hooks
    ):
        return "its weight is computed (parametrization or hooks)"
    return None


def _owners(root: nn.Module) -> dict[int, list[str]]:
    """For every parameter and buffer, the names of the modules that hold it."""
    owners: dict[int, list[str]] = {}
    for name, module in root.named_modules(remove_duplicate=True):
        for t in [*module._parameters.values(), *module._buffers.values()]:
            if t is not None:
                owners.setdefault(id(t), []).append(name)
    return owners


class Planner:
    """Pairs proposed by a finder, checked, with the reason for every BatchNorm left alone."""

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.names = [name for name, _ in bn_layers(root)]
        self.pairs: dict[str, str] = {}  # bn name -> layer name
        self.left: dict[str, str] = {}
        self.untraced: list[tuple[str, str]] = []
        self._owners = _owners(root)

    def leave(self, bn_name: str, why: str) -> None:
        """Leave ``bn_name`` alone (the first reason given is kept)."""
        self.pairs.pop(bn_name, None)
        self.left.setdefault(bn_name, why)

    def _shared(self, layer_name: str, layer: nn.Module) -> str | None:
        for attr in ("weight", "bias"):
            t = getattr(layer, attr, None)
            others = [n for n in self._owners.get(id(t), []) if n != layer_name]
            if isinstance(t, Tensor) and others:
                return f"the {attr} of {layer_name!r} is shared with {others[0]!r}"
        return None

    def propose(self, layer_name: str, layer: nn.Module, bn_name: str, bn: nn.Module) -> None:
        """Fold ``bn`` into ``layer`` unless a check says why not."""
        if bn_name in self.left:
            return
        why = fixed(bn) or foldable(layer) or self._shared(layer_name, layer)
        width = getattr(bn, "num_features", None)
        if why is None and out_features(layer) != width:
            why = f"{layer_name!r} has {out_features(layer)} output features, the layer {width}"
        others = [b for b, la in self.pairs.items() if la == layer_name]
        if why is None and others:  # two BatchNorm layers after one layer: neither folds
            why = f"{layer_name!r} also feeds {others[0]!r}"
            self.leave(others[0], f"{layer_name!r} also feeds {bn_name!r}")
        if why is None:
            self.pairs[bn_name] = layer_name
        else:
            self.leave(bn_name, why)

    def report(self, found_by: str, default: str) -> FuseReport:
        """The report; ``default`` is the reason for a layer no finder said anything about."""
        fused = tuple((self.pairs[n], n) for n in self.names if n in self.pairs)
        left = tuple((n, self.left.get(n, default)) for n in self.names if n not in self.pairs)
        return FuseReport(fused, left, tuple(self.untraced), found_by)
