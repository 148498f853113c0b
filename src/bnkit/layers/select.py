"""Finding and selecting the BatchNorm layers of a model.

A selection (``where=``) is a name glob, a module type (or tuple of types), or a predicate
``(name, layer) -> bool``. A glob matches a layer when it matches the layer's qualified name or
the name of a module that contains it, so ``"backbone"`` and ``"backbone.*"`` both select
everything inside ``backbone``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import TypeAlias

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

from bnkit.errors import BNKitError, LayerError, SelectionError

__all__ = [
    "Where",
    "bn_layers",
    "is_bn_layer",
    "lazy_reason",
    "register_bn_type",
    "select",
    "targets",
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


def lazy_reason(layer: nn.Module) -> str | None:
    """Why a lazy layer cannot be used yet (None when it is materialized or not lazy)."""
    if isinstance(layer, LazyModuleMixin) and layer.has_uninitialized_params():
        return (
            f"is an unmaterialized {type(layer).__name__}; run one forward pass first so it "
            "knows num_features"
        )
    return None


def unwrap(model: object, call: str = "", error: type[BNKitError] = LayerError) -> nn.Module:
    """The model inside DDP/DataParallel (``.module``) and ``torch.compile`` (``._orig_mod``).

    Raises:
        LayerError: ``model`` is not a ``torch.nn.Module`` (or ``error``, naming the bnkit
            function ``call`` that was given it).
    """
    if not isinstance(model, nn.Module):
        who = f"bnkit.{call} expects" if call else "expected"
        raise error(
            f"{who} a torch.nn.Module (got {type(model).__name__}); pass the model itself (or "
            "a BatchNorm layer)"
        )
    module: nn.Module = model
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        elif type(module).__name__ == "OptimizedModule" and hasattr(module, "_orig_mod"):
            inner = module._orig_mod
            assert isinstance(inner, nn.Module)
            module = inner
        else:
            return module


def bn_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Every BatchNorm layer of the (unwrapped) model with its qualified name.

    Examples:
        >>> import torch.nn as nn, bnkit
        >>> [name for name, _ in bnkit.bn_layers(nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3)))]
        ['1']
    """
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

    Raises:
        LayerError: ``model`` is not a ``torch.nn.Module``.
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


def targets(model: nn.Module, where: Where = None) -> list[tuple[str, nn.Module]]:
    """The layers a policy goes to: :func:`select`, but without ``where`` frozen exports (fixed
    by nature) are skipped.

    Raises:
        LayerError: without ``where``, every BatchNorm layer is a frozen export.
    """
    layers = select(model, where)
    if where is not None:
        return layers
    chosen: list[tuple[str, nn.Module]] = [
        (name, layer) for name, layer in layers if isinstance(layer, _BatchNorm)
    ]
    if not chosen:
        raise LayerError(
            "every BatchNorm layer of the model is a frozen export, which takes no policy; "
            "convert them back with bnkit.from_frozen(model) first"
        )
    return chosen
