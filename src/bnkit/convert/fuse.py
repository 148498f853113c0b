"""``fuse``: fold BatchNorm layers whose behaviour is fixed into the layer before them.

The pairs are found on the torch.fx graph of the model (:mod:`bnkit.convert._fuse_fx`) or,
given an example input, on a real forward followed operation by operation
(:mod:`bnkit.convert._fuse_trace`: models fx cannot trace, Linear layers on token sequences).
Either way a pair folds only when the layer's output reaches nothing but the BatchNorm layer,
with its features where BatchNorm normalizes, and the layer's weight is its own; the checks
every pair must pass are in :mod:`bnkit.convert._fuse_plan`. The fold is made on a copy of the
model itself, which keeps its class, its forward and every other module (the folded BatchNorm
layers become ``nn.Identity``).
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any, TypeVar, cast

import torch.nn as nn
from torch import Tensor

from bnkit.convert._fold import fold
from bnkit.convert._fuse_fx import find_by_fx
from bnkit.convert._fuse_plan import FuseReport, Planner
from bnkit.convert._fuse_trace import find_by_forward
from bnkit.errors import FuseWarning
from bnkit.layers.adapters import route
from bnkit.layers.managed import original_class
from bnkit.layers.select import unwrap

__all__ = ["FuseReport", "fuse", "fuse_plan"]

M = TypeVar("M", bound=nn.Module)
_log = logging.getLogger("bnkit")


def _plan(root: nn.Module, example_input: Any) -> FuseReport:
    planner = Planner(root)
    if example_input is None:
        find_by_fx(planner)
        return planner.report("fx", "not called as a module in forward")
    find_by_forward(planner, example_input)
    return planner.report("forward", "not reached by the forward of the example input")


def fuse_plan(model: nn.Module, example_input: Any = None) -> FuseReport:
    """What :func:`fuse` would fold, and why each other BatchNorm layer would be left.

    Args:
        model: the model (DDP and ``torch.compile`` wrappers are seen through); not changed.
        example_input: an input the model takes (a tensor, a tuple of positional arguments,
            or a dict of keyword arguments): the pairs are then found on a forward of it, run
            on a copy of the model. Without it, on the torch.fx graph.

    Raises:
        LayerError: ``model`` is not an ``nn.Module``.
        InputError: the forward of ``example_input`` raised.
    """
    return _plan(unwrap(model, "fuse_plan"), example_input)


def fuse(model: M, example_input: Any = None) -> M:
    """A copy of the model with every foldable BatchNorm layer folded into the layer before it.

    A BatchNorm layer is folded when its output is fixed in its current phase (plain
    BatchNorm in ``eval()``, the ``frozen`` and ``frozen_stats`` policies, frozen exports: it
    normalizes with running statistics and does not update them), it follows a
    Conv1d/2d/3d, ConvTranspose1d/2d/3d or Linear module whose output reaches nothing else,
    with that layer's output features in the dimension BatchNorm normalizes (dimension 1), and
    the layer's weight and bias are used by nothing but its own forward. The folded layer is
    replaced by ``nn.Identity``; nothing else about the model changes, and the input model is
    not changed (DDP and compile wrappers are dropped from the copy).

    Without ``example_input`` the pairs are found on the torch.fx graph: convolutions followed
    directly by BatchNorm, and Linear layers whose input is flattened to ``(N, C)`` (the graph
    has no shapes to tell where else a Linear's features end up). A model fx cannot trace
    folds nothing then, with a :class:`~bnkit.errors.FuseWarning`. With ``example_input`` one
    forward of it on a copy of the model is followed operation by operation: untraceable models,
    Linear layers on ``(N, L, C)`` tokens with BatchNorm1d on the flattened or transposed
    tokens, and splits along the batch (ghost batches) are seen too; that forward's dataflow is
    assumed for every input. :func:`fuse_plan` gives the report (also logged to the ``"bnkit"``
    logger at INFO level): every pair folded, and why each other BatchNorm layer was left.

    Raises:
        LayerError: ``model`` is not an ``nn.Module``.
        InputError: the forward of ``example_input`` raised.
    """
    fused = copy.deepcopy(unwrap(model, "fuse"))
    report = _plan(fused, example_input)
    if report.untraced:
        failed = "; ".join(f"{n!r} ({e})" for n, e in report.untraced)
        warnings.warn(
            FuseWarning(
                f"torch.fx could not trace {failed}, so nothing was folded; pass "
                "example_input= to bnkit.fuse so that it follows a real forward instead"
            ),
            stacklevel=2,
        )
    modules = dict(fused.named_modules())
    for layer_name, bn_name in report.fused:
        fold(modules[layer_name], modules[bn_name])
    _drop(fused, {id(modules[bn]) for _, bn in report.fused})
    _log.info("bnkit.fuse: %s", report)
    return cast(M, fused)


class FoldedRemainder(nn.Module):
    """What is left of a folded layer whose class does more than BatchNorm (timm's
    ``BatchNormAct2d``): its declared steps after the normalization, with its submodules."""

    def __init__(self, layer: nn.Module, source: type[nn.Module]) -> None:
        super().__init__()
        self.source = source
        for name, child in layer.named_children():
            self.add_module(name, child)

    def forward(self, input: Tensor) -> Tensor:
        adapter = route(self.source).adapter
        assert adapter is not None
        return adapter.around(self, input, lambda x: x)

    def extra_repr(self) -> str:
        return f"after the folded {self.source.__name__}"


def _remainder(layer: nn.Module) -> nn.Module:
    """What replaces a folded layer: ``nn.Identity``, or the steps its class adds."""
    source = getattr(layer, "adapted_from", None) or original_class(layer)
    if route(source).adapter is None:
        return nn.Identity().train(layer.training)
    return FoldedRemainder(layer, source).train(layer.training)


def _drop(root: nn.Module, gone: set[int]) -> None:
    """Replace the folded layers under every name that holds them (a layer registered twice
    in one parent, ``self.bn2 = self.bn``, included)."""
    made: dict[int, nn.Module] = {}
    for parent in root.modules():
        for key, child in list(parent._modules.items()):
            if child is not None and id(child) in gone:
                if id(child) not in made:
                    made[id(child)] = _remainder(child)
                parent._modules[key] = made[id(child)]
