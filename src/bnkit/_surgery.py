"""Module surgery: find BatchNorm layers, select them, capture and restore their state.

Every bnkit call that changes a model goes through :func:`capture` / :func:`restore` (a
layer's own state) or :func:`replace_modules` (swapping a layer for another), so that what is
saved, copied and restored is decided in one place.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Iterator
from typing import Any, TypeAlias

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit.errors import SelectionError

__all__ = [
    "LayerState",
    "Where",
    "bn_layers",
    "capture",
    "is_bn_layer",
    "replace_modules",
    "restore",
    "select",
    "unwrap",
]

Where: TypeAlias = (
    str | type[nn.Module] | tuple[type[nn.Module], ...] | Callable[[str, nn.Module], bool] | None
)
"""A selection of layers: a name glob, a module type (or tuple), or ``predicate(name, layer)``."""

# Extra BatchNorm-like classes (bnkit's frozen layers register here).
_EXTRA_BN_TYPES: list[type[nn.Module]] = []


def register_bn_type(cls: type[nn.Module]) -> None:
    """Count ``cls`` as a BatchNorm layer for selection, reports and checks."""
    if cls not in _EXTRA_BN_TYPES:
        _EXTRA_BN_TYPES.append(cls)


def is_bn_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a BatchNorm layer bnkit knows (any ``_BatchNorm`` or frozen one)."""
    return isinstance(module, (_BatchNorm, *_EXTRA_BN_TYPES))


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
            inner = model._orig_mod
            assert isinstance(inner, nn.Module)
            model = inner
        else:
            return model


def bn_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every BatchNorm layer of the (unwrapped) model with its qualified name."""
    for name, module in unwrap(model).named_modules():
        if is_bn_layer(module):
            yield name, module


def _matches(where: Where, name: str, module: nn.Module) -> bool:
    if where is None:
        return True
    if isinstance(where, str):
        parts = name.split(".") if name else []
        prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)] or [""]
        return any(fnmatch.fnmatchcase(p, where) for p in prefixes)
    if isinstance(where, (type, tuple)):
        return isinstance(module, where)
    if callable(where):
        return bool(where(name, module))
    raise SelectionError(
        f"where= must be a name glob, a module type, or a predicate(name, layer) "
        f"(got {type(where).__name__})"
    )


def select(model: nn.Module, where: Where = None) -> list[tuple[str, nn.Module]]:
    """The BatchNorm layers that ``where`` selects; an empty selection is an error.

    A glob matches a layer when it matches the layer's qualified name or the name of a module
    that contains it, so ``"backbone"`` and ``"backbone.*"`` both select everything inside
    ``backbone``.

    Raises:
        SelectionError: the model has no BatchNorm layer, or ``where`` matches none of them.
    """
    layers = list(bn_layers(model))
    if not layers:
        raise SelectionError(
            "the model has no BatchNorm layer (nn.BatchNorm1d/2d/3d, nn.SyncBatchNorm, their "
            "subclasses, or bnkit's frozen layers)"
        )
    chosen = [(n, m) for n, m in layers if _matches(where, n, m)]
    if not chosen:
        names = ", ".join(repr(n) for n, _ in layers[:8])
        more = f", … ({len(layers)} in all)" if len(layers) > 8 else ""
        raise SelectionError(
            f"where={where!r} matches no BatchNorm layer; the model's BatchNorm layers are "
            f"{names}{more}"
        )
    return chosen


@dataclasses.dataclass(frozen=True)
class LayerState:
    """What bnkit may change on a layer: class, momentum, requires_grad, its own attributes."""

    cls: type[nn.Module]
    momentum: float | None
    requires_grad: tuple[bool | None, bool | None]
    bnkit: dict[str, Any]


def _requires_grad(module: nn.Module, name: str) -> bool | None:
    param = getattr(module, name, None)
    return None if param is None else bool(param.requires_grad)


def capture(module: nn.Module) -> LayerState:
    """Snapshot what bnkit may change on ``module``."""
    return LayerState(
        cls=type(module),
        momentum=getattr(module, "momentum", None),
        requires_grad=(_requires_grad(module, "weight"), _requires_grad(module, "bias")),
        bnkit={k: v for k, v in vars(module).items() if k.startswith("_bnkit_")},
    )


def restore(module: nn.Module, state: LayerState) -> None:
    """Put ``module`` back exactly as captured (parameters and buffers are untouched)."""
    module.__class__ = state.cls
    for key in [k for k in vars(module) if k.startswith("_bnkit_")]:
        delattr(module, key)
    vars(module).update(state.bnkit)
    if hasattr(module, "momentum"):
        vars(module)["momentum"] = state.momentum
    for name, flag in zip(("weight", "bias"), state.requires_grad, strict=True):
        param = getattr(module, name, None)
        if param is not None and flag is not None:
            param.requires_grad_(flag)


def replace_modules(
    model: nn.Module,
    predicate: Callable[[str, nn.Module], bool],
    factory: Callable[[str, nn.Module], nn.Module],
) -> nn.Module:
    """Replace each module for which ``predicate(name, module)`` holds by ``factory(name, module)``.

    Conversion happens in place in the parents; when the root itself matches, the new module is
    returned (otherwise the root is). The new module inherits ``training``; a module shared by
    several parents is replaced once and stays shared.
    """
    root = unwrap(model)
    if predicate("", root):
        new = factory("", root)
        new.train(root.training)
        return new
    done: dict[int, nn.Module] = {}
    for parent_name, parent in list(root.named_modules(remove_duplicate=False)):
        for child_name, child in list(parent.named_children()):
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if id(child) in done:
                setattr(parent, child_name, done[id(child)])
            elif predicate(name, child):
                new = factory(name, child)
                new.train(child.training)
                done[id(child)] = new
                setattr(parent, child_name, new)
    return model
