"""The classes of managed layers, made on the fly: a layer keeps its identity, not its class.

bnkit swaps a layer's class for a subclass that puts bnkit's forward just above PyTorch's own
(or just above a declared adapter's class) in the method resolution order::

    ManagedBatchNorm2d -> [user subclass ->] BatchNorm2d -> ManagedForward -> _BatchNorm

so a user subclass that calls ``super().forward(x)`` keeps its behaviour, while parameters,
buffers, ``state_dict`` keys and hooks stay exactly as they were. The made class is named
``Managed<Original>``, so ``repr(layer)`` and ``type(layer)`` agree; it pickles as "the managed
form of <original>".
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit.layers import legacy
from bnkit.layers.adapters import LayerAdapter, Verdict, route
from bnkit.layers.inputs import dims_of
from bnkit.layers.paths import run
from bnkit.layers.state import ATTR, ManagedState

__all__ = ["ClassInfo", "is_managed", "managed_class", "original_class"]


@dataclasses.dataclass(frozen=True)
class ClassInfo:
    """What a made class knows: the class it manages, its input ranks, its adapter."""

    original: type[_BatchNorm]
    dims: tuple[int, int] | None
    adapter: LayerAdapter | None


class ManagedForward(_BatchNorm):
    """The forward of every managed layer (a mixin; never instantiated directly)."""

    _bnkit_mixin: ClassVar[bool] = True
    _bnkit_class: ClassVar[ClassInfo]

    def forward(self, input: Tensor) -> Tensor:
        return run(self, input, self._bnkit_class.dims)

    def extra_repr(self) -> str:
        base: str = super().extra_repr()  # type: ignore[no-untyped-call]
        state: ManagedState = vars(self)[ATTR]
        return f"{base}, policy={state.policy!r}"

    def __reduce_ex__(self, protocol: Any) -> Any:
        # The made class is not importable; pickle the layer as "managed form of <original>".
        return (_rebuild, (self._bnkit_class.original,), self.__dict__)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(legacy.upgrade(state))  # type: ignore[no-untyped-call]


class ManagedSyncForward(ManagedForward, nn.SyncBatchNorm):
    """The forward of a managed ``nn.SyncBatchNorm``: it synchronizes over its process group
    whenever one is initialized, on CPU (gloo) as well as on accelerators."""

    _bnkit_mixin: ClassVar[bool] = True


class AdaptedForward(ManagedForward):
    """The forward of a managed layer whose class computes BatchNorm itself (see
    :func:`bnkit.register_layer`): the adapter's steps around bnkit's forward."""

    _bnkit_mixin: ClassVar[bool] = True

    def forward(self, input: Tensor) -> Tensor:
        info = self._bnkit_class
        assert info.adapter is not None
        return info.adapter.around(self, input, lambda x: run(self, x, info.dims))


_CLASSES: dict[type[_BatchNorm], type[_BatchNorm]] = {}
_ORIGINALS: dict[type[nn.Module], type[_BatchNorm]] = {}


def managed_class(cls: type[_BatchNorm]) -> type[_BatchNorm]:
    """The managed counterpart of a BatchNorm class (made once, then cached).

    The caller has checked that the class's forward reaches a policy (not foreign).
    """
    if cls in _ORIGINALS:
        return cls
    if cls not in _CLASSES:
        r = route(cls)
        adapter = r.adapter if r.verdict is Verdict.ADAPTED else None
        dims = adapter.dims if adapter is not None and adapter.dims else dims_of(cls)
        namespace = {
            "__module__": __name__,
            "__qualname__": f"Managed{cls.__name__}",
            "__doc__": cls.__doc__,
            "_bnkit_class": ClassInfo(cls, dims, adapter),
        }
        if adapter is not None:
            # Just above the adapted class: its forward is replaced, a subclass's kept.
            assert r.owner is not None
            shim = type(f"Adapted{r.owner.__name__}", (AdaptedForward, r.owner), {})
            bases: tuple[type, ...] = (shim,) if cls is r.owner else (cls, shim)
        else:
            mixin = ManagedSyncForward if issubclass(cls, nn.SyncBatchNorm) else ManagedForward
            bases = (mixin,) if issubclass(mixin, cls) else (cls, mixin)
        managed = type(f"Managed{cls.__name__}", bases, namespace)
        _CLASSES[cls] = managed
        _ORIGINALS[managed] = cls
    return _CLASSES[cls]


def is_managed(layer: nn.Module) -> bool:
    """Whether bnkit manages this layer's behaviour."""
    return type(layer) in _ORIGINALS


def original_class(layer: nn.Module) -> type[nn.Module]:
    """The class the layer had before bnkit managed it."""
    cls = type(layer)
    return _ORIGINALS.get(cls, cls)


def _rebuild(cls: type[_BatchNorm]) -> _BatchNorm:
    managed = managed_class(cls)
    return managed.__new__(managed)
