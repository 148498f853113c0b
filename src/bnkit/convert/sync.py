"""SyncBatchNorm conversion that keeps everything about a layer, and reverts.

:func:`to_sync` changes the class of each selected layer *in place*: the module object, its
parameters and buffers (the same tensors), hooks, ``training`` and ``requires_grad`` all
stay. A plain ``BatchNorm1d/2d/3d`` becomes ``nn.SyncBatchNorm`` (as
``nn.SyncBatchNorm.convert_sync_batchnorm`` does); a subclass becomes a class made from it
and ``nn.SyncBatchNorm``::

    MyBN (synchronized) -> MyBN -> BatchNorm2d -> SyncBatchNorm -> _BatchNorm

so its own ``forward`` (an activation after ``super().forward(x)``, say) and its input checks
still run, with SyncBatchNorm's forward underneath. A subclass whose forward computes
BatchNorm itself (``F.batch_norm``, as timm's ``BatchNormAct2d`` does) would never reach
SyncBatchNorm's forward, so its synchronized form would silently not synchronize: before
changing anything, :func:`to_sync` runs each such class's forward once per phase on a tiny
input, with SyncBatchNorm's forward replaced by a marker (so nothing is computed or exchanged
there, and the layer's buffers are put back), and refuses the classes whose forward does not
reach it. A layer bnkit manages keeps its policy. :func:`from_sync` restores the class each
layer had (SyncBatchNorm itself does not know whether it was 1d, 2d or 3d; bnkit remembers).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, cast

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

from bnkit._managed import is_managed, managed_class, original_class
from bnkit._probe import foreign_forward
from bnkit._surgery import LayerState, Where, select
from bnkit.convert import _synced
from bnkit.errors import LayerError

__all__ = ["from_sync", "to_sync"]

M = TypeVar("M", bound=nn.Module)
# Not "_bnkit_..." (those belong to a managed layer's policy state, which unfreeze resets).
_KEPT = "_bnkitsync_source"
_PLAIN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


class _SyncedMeta(type):
    """Made classes print as ``<class 'module.MyBN' (synchronized)>``."""

    def __repr__(cls) -> str:
        source = next(c for c in cls.__mro__ if type(c) is not _SyncedMeta)
        return f"<class '{source.__module__}.{source.__qualname__}' (synchronized)>"


_CLASSES: dict[type[_BatchNorm], type[_BatchNorm]] = {}


def sync_class(cls: type[_BatchNorm]) -> type[_BatchNorm]:
    """The synchronized counterpart of a BatchNorm class (made once, then cached)."""
    if issubclass(cls, nn.SyncBatchNorm):
        return cls
    if cls in _PLAIN:
        return nn.SyncBatchNorm
    if cls not in _CLASSES:
        # Served by bnkit.convert._synced under an encoded name, so that pickle finds it.
        namespace = {
            "__module__": _synced.__name__,
            "__qualname__": _synced.export_name(cls),
            "__doc__": cls.__doc__,
        }
        made = _SyncedMeta(cls.__name__, (cls, nn.SyncBatchNorm), namespace)
        _CLASSES[cls] = cast(type[_BatchNorm], made)
    return _CLASSES[cls]


def _set_class(layer: _BatchNorm, cls: type[_BatchNorm]) -> None:
    """Give ``layer`` the class ``cls`` (its managed form if bnkit manages it)."""
    if is_managed(layer):
        state: LayerState = vars(layer)["_bnkit_original"]
        vars(layer)["_bnkit_original"] = dataclasses.replace(state, cls=cls)
        layer.__class__ = managed_class(cls)
    else:
        layer.__class__ = cls


class _Reached(nn.SyncBatchNorm):
    """Stands in for SyncBatchNorm's forward while a subclass's forward is checked."""

    def forward(self, input: Tensor) -> Tensor:
        vars(self)["_bnkitsync_reached"] = True
        return input


def _probe_input(layer: _BatchNorm, cls: type[nn.Module]) -> Tensor:
    """A tiny batch of two for ``cls``: 2D for 1d layers, 5D for 3d, 4D otherwise."""
    spatial = 0 if issubclass(cls, nn.BatchNorm1d) else 3 if issubclass(cls, nn.BatchNorm3d) else 2
    ref = layer.weight if layer.weight is not None else layer.running_mean
    kw: dict[str, Any] = {} if ref is None else {"dtype": ref.dtype, "device": ref.device}
    return torch.randn(2, layer.num_features, *([2] * spatial), **kw)


def _unsynchronized(layer: _BatchNorm, cls: type[_BatchNorm]) -> str | None:
    """Why ``cls.forward`` would not synchronize on ``layer`` (None when it reaches
    SyncBatchNorm's forward in train() and eval())."""
    probe = type(cls.__name__, (cls, _Reached), {"__module__": cls.__module__})
    saved = [(t, t.detach().clone()) for t in (*layer.parameters(False), *layer.buffers(False))]
    old_cls, old_training = layer.__class__, layer.training
    devices = [ref.device.index or 0 for ref in layer.buffers(False) if ref.is_cuda][:1]
    try:
        for training in (True, False):
            layer.__class__ = probe
            layer.training = training
            vars(layer).pop("_bnkitsync_reached", None)
            with torch.no_grad(), torch.random.fork_rng(devices=devices):
                layer.forward(_probe_input(layer, cls))
            if not vars(layer).get("_bnkitsync_reached"):
                phase = "train()" if training else "eval()"
                return (
                    f"{cls.__name__}.forward does not call BatchNorm's forward "
                    f"(super().forward(x)) in {phase}, so a SyncBatchNorm made from it would "
                    "never synchronize; convert it with its library's own function (timm: "
                    "timm.layers.convert_sync_batchnorm), or leave it out with where="
                )
    except Exception as err:
        text = " ".join(str(err).split())[:200]
        return (
            f"bnkit could not check that {cls.__name__}.forward calls "
            f"super().forward(x) (it raised {type(err).__name__} on a small input: {text}); "
            "leave it out with where="
        )
    finally:
        layer.__class__ = old_cls
        layer.training = old_training
        vars(layer).pop("_bnkitsync_reached", None)
        with torch.no_grad():
            for t, value in saved:
                if not torch.equal(t, value):  # untouched tensors keep their version counter
                    t.copy_(value)
    return None


def to_sync(model: M, process_group: Any = None, where: Where = None) -> M:
    """Make the selected BatchNorm layers synchronize batch statistics across processes.

    In place; returns the model. Layers that already are ``nn.SyncBatchNorm`` and frozen
    exports are skipped (with ``where=None``; selecting a frozen export is an error).

    Args:
        model: the model.
        process_group: the group to synchronize over (None: the whole world).
        where: which layers; all if None.

    A subclass whose own forward does not call ``super().forward(x)`` (it computes BatchNorm
    itself, as timm's ``BatchNormAct2d`` does) is refused: its synchronized form would never
    synchronize. bnkit tells by running the class's forward once in each phase on a batch of
    two, with SyncBatchNorm's forward stubbed out (the layer is put back as it was).

    Raises:
        SelectionError: ``where`` matches no BatchNorm layer.
        LayerError: a selected layer cannot be converted (nothing is changed then).
    """
    chosen = []
    checked: dict[type[nn.Module], str | None] = {}
    for name, layer in select(model, where):
        if not isinstance(layer, _BatchNorm):
            if where is not None:
                raise LayerError(
                    f"layer {name!r} is a {type(layer).__name__}, which has no synchronized "
                    "form; convert it back first (bnkit.from_frozen)"
                )
            continue
        if isinstance(layer, LazyModuleMixin) and layer.has_uninitialized_params():
            raise LayerError(
                f"layer {name!r} is an unmaterialized lazy layer; run one forward pass first"
            )
        if isinstance(layer, nn.SyncBatchNorm):
            continue
        source = original_class(layer)
        if foreign_forward(source):
            if source not in checked:
                checked[source] = _unsynchronized(layer, source)  # type: ignore[arg-type]
            if checked[source] is not None:
                raise LayerError(f"layer {name!r}: {checked[source]}")
        chosen.append(layer)
    for layer in chosen:
        source = original_class(layer)
        vars(layer)[_KEPT] = source
        vars(layer)["process_group"] = process_group
        _set_class(layer, sync_class(source))  # type: ignore[arg-type]
    return model


def from_sync(model: M, where: Where = None, default: type[_BatchNorm] | None = None) -> M:
    """Turn the selected ``nn.SyncBatchNorm`` layers back into the classes they had.

    In place; returns the model. A layer bnkit did not convert has no class to go back to: it
    takes ``default`` (e.g. ``nn.BatchNorm2d``), and without one it is an error.

    Raises:
        LayerError: a SyncBatchNorm that bnkit did not convert, and no ``default`` (nothing is
            changed then).
    """
    chosen: list[tuple[nn.SyncBatchNorm, type[_BatchNorm]]] = []
    unknown = []
    for name, layer in select(model, where):
        if not isinstance(layer, nn.SyncBatchNorm):
            continue
        target = vars(layer).get(_KEPT) or default
        if target is None:
            unknown.append(name)
        else:
            chosen.append((layer, target))
    if unknown:
        raise LayerError(
            f"layer(s) {', '.join(repr(n) for n in unknown)} are nn.SyncBatchNorm layers that "
            "bnkit did not convert, so their class (BatchNorm1d/2d/3d, a subclass) is unknown; "
            "pass default=nn.BatchNorm2d (or the right class)"
        )
    for layer, target in chosen:
        _set_class(layer, target)
        vars(layer).pop(_KEPT, None)
        vars(layer).pop("process_group", None)
    return model
