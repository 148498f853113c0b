"""SyncBatchNorm conversion that keeps everything about a layer, and reverts.

:func:`to_sync` changes the class of each selected layer *in place*: the module object, its
parameters and buffers (the same tensors), hooks, ``training`` and ``requires_grad`` all
stay. A plain ``BatchNorm1d/2d/3d`` becomes ``nn.SyncBatchNorm`` (as
``nn.SyncBatchNorm.convert_sync_batchnorm`` does); a subclass becomes a class made from it
and ``nn.SyncBatchNorm``::

    MyBN (synchronized) -> MyBN -> BatchNorm2d -> SyncBatchNorm -> _BatchNorm

so its own ``forward`` (an activation after ``super().forward(x)``, say) and its input checks
still run, with SyncBatchNorm's forward underneath. A class whose forward computes BatchNorm
itself gets its declared steps (:func:`bnkit.register_layer`; timm's ``BatchNormAct2d`` is
built in) around SyncBatchNorm's forward; without a declaration its synchronized form would
never synchronize, so it is refused before anything changes; a forward that calls
``super().forward`` is run once per phase on a batch of two, with SyncBatchNorm's forward
replaced by a marker (the layer is put back as it was), to make sure no condition skips it.
A layer bnkit manages keeps its policy. :func:`from_sync` restores the class each layer had
(SyncBatchNorm itself does not know whether it was 1d, 2d or 3d; bnkit remembers).
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit.convert._synced import sync_class
from bnkit.errors import LayerError
from bnkit.layers.adapters import Verdict, route
from bnkit.layers.managed import managed_class, original_class
from bnkit.layers.select import Where, lazy_reason, select
from bnkit.layers.state import ATTR, state_of

__all__ = ["from_sync", "to_sync"]

M = TypeVar("M", bound=nn.Module)
_KEPT = "_bnkitsync_source"


def _set_class(layer: _BatchNorm, cls: type[_BatchNorm]) -> None:
    """Give ``layer`` the class ``cls`` (its managed form if bnkit manages it)."""
    state = state_of(layer)
    if state is not None:
        original = dataclasses.replace(state.original, cls=cls)
        vars(layer)[ATTR] = dataclasses.replace(state, original=original)
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


def _refusal(layer: _BatchNorm, cls: type[nn.Module]) -> str | None:
    """Why a SyncBatchNorm made from ``cls`` would not synchronize (None when it would).

    A forward read to call ``super().forward`` is run once per phase to make sure it does
    (a condition may skip it); one that computes BatchNorm itself needs a declaration.
    """
    r = route(cls)
    if r.verdict is Verdict.FOREIGN:
        assert r.owner is not None
        return (
            f"{r.owner.__name__}.forward computes BatchNorm itself (it never calls "
            "super().forward(x)), so a SyncBatchNorm made from it would never synchronize; "
            f"declare what it does around the normalization with "
            f"bnkit.register_layer({r.owner.__name__}, after=...), or leave it out with where="
        )
    if r.checked or r.verdict is Verdict.UNREADABLE:  # run it to see
        return _unsynchronized(layer, cls)  # type: ignore[arg-type]
    return None


def to_sync(model: M, process_group: Any = None, where: Where = None) -> M:
    """Make the selected BatchNorm layers synchronize batch statistics across processes.

    In place; returns the model. Layers that already are ``nn.SyncBatchNorm`` and frozen
    exports are skipped (with ``where=None``; selecting a frozen export is an error).

    Args:
        model: the model.
        process_group: the group to synchronize over (None: the whole world).
        where: which layers; all if None.

    Raises:
        SelectionError: ``where`` matches no BatchNorm layer.
        LayerError: a selected layer cannot be converted (nothing is changed then): lazy, or
            of a class whose forward computes BatchNorm itself without a declaration.
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
        lazy = lazy_reason(layer)
        if lazy is not None:
            raise LayerError(f"layer {name!r} {lazy}")
        if isinstance(layer, nn.SyncBatchNorm):
            continue
        source = original_class(layer)
        if source not in checked:
            checked[source] = _refusal(layer, source)
        refused = checked[source]
        if refused is not None:
            raise LayerError(f"layer {name!r}: {refused}")
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
