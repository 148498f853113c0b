"""The synchronized classes :func:`bnkit.to_sync` makes from BatchNorm subclasses.

A made class is named here by an encoding of the class it was made from, and this module's
``__getattr__`` makes it again from that name, so pickle (``torch.save(model)``) finds it in
any process that can import the original class.

A subclass whose forward calls ``super().forward(x)`` keeps it, with SyncBatchNorm's forward
underneath. A class declared with :func:`bnkit.register_layer` (timm's ``BatchNormAct2d``)
gets a forward that runs its declared steps around SyncBatchNorm's, and is declared in turn,
so a policy applied to it later replaces that forward as it would the original's.
"""

from __future__ import annotations

import importlib
from typing import Any, cast

import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit.layers.adapters import LayerAdapter, Verdict, register_layer, route

__all__ = ["PREFIX", "export_name", "sync_class"]

PREFIX = "_bnkit_sync_"
_PLAIN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CLASSES: dict[type[_BatchNorm], type[_BatchNorm]] = {}


class _SyncedMeta(type):
    """Made classes print as ``<class 'module.MyBN' (synchronized)>``."""

    def __repr__(cls) -> str:
        source = next(c for c in cls.__mro__ if type(c) is not _SyncedMeta)
        return f"<class '{source.__module__}.{source.__qualname__}' (synchronized)>"


def export_name(cls: type) -> str:
    """The attribute name under which this module serves the class made from ``cls``."""
    return PREFIX + f"{cls.__module__}:{cls.__qualname__}".encode().hex()


def _adapted_forward(adapter: LayerAdapter) -> Any:
    def forward(self: nn.SyncBatchNorm, input: Tensor) -> Tensor:
        return adapter.around(self, input, lambda x: nn.SyncBatchNorm.forward(self, x))

    return forward


def sync_class(cls: type[_BatchNorm]) -> type[_BatchNorm]:
    """The synchronized counterpart of a BatchNorm class (made once, then cached)."""
    if issubclass(cls, nn.SyncBatchNorm):
        return cls
    if cls in _PLAIN:
        return nn.SyncBatchNorm
    if cls not in _CLASSES:
        namespace: dict[str, Any] = {
            "__module__": __name__,
            "__qualname__": export_name(cls),
            "__doc__": cls.__doc__,
        }
        r = route(cls)
        adapter = r.adapter if r.verdict is Verdict.ADAPTED else None
        if adapter is not None:
            namespace["forward"] = _adapted_forward(adapter)
        made = cast(type[_BatchNorm], _SyncedMeta(cls.__name__, (cls, nn.SyncBatchNorm), namespace))
        if adapter is not None:
            register_layer(made, before=adapter.before, after=adapter.after, dims=adapter.dims)
        _CLASSES[cls] = made
    return _CLASSES[cls]


def __getattr__(name: str) -> Any:
    if not name.startswith(PREFIX):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, _, qualname = bytes.fromhex(name[len(PREFIX) :]).decode().partition(":")
    source: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        source = getattr(source, part)
    return sync_class(source)
