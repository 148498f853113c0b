"""The first-forward check of subclasses whose forward bnkit could not fully read.

A managed layer whose class has its own ``forward`` (one that calls ``super().forward``, or one
whose source cannot be read) is watched until it has run in ``train()`` and in ``eval()``:
bnkit's forward must run inside it in each phase (a condition in the forward may skip it in
one). Once it has, the class is trusted. If it does not, the layer's buffers are put back, an
error is raised, and the class stays refused: every later forward of a managed layer of that
class raises before it runs, and applying a policy to it is refused.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn
from torch import Tensor

from bnkit.errors import LayerError
from bnkit.layers.adapters import Verdict, route
from bnkit.layers.state import state_of

__all__ = ["ACTIVE", "mark", "refresh", "refusal", "verified"]

_VERIFIED: set[tuple[type[nn.Module], bool]] = set()
"""``(class, training)`` pairs whose forward was seen reaching bnkit's."""
_REFUSED: dict[type[nn.Module], str] = {}
ACTIVE: dict[int, bool] = {}
"""``id(layer) -> reached`` for the layers whose forward is being watched now."""
_SAVED: dict[int, list[Tensor]] = {}


def refusal(cls: type[nn.Module]) -> str | None:
    """Why layers of ``cls`` cannot take a policy (a forward seen bypassing bnkit's), if so.

    Declaring the class with :func:`bnkit.register_layer` lifts the refusal.
    """
    if route(cls).verdict is Verdict.ADAPTED:
        return None
    return _REFUSED.get(cls)


def verified(cls: type[nn.Module]) -> bool:
    """Whether forwards of ``cls`` were seen reaching bnkit's in both phases."""
    return (cls, True) in _VERIFIED and (cls, False) in _VERIFIED


def _needs_watch(cls: type[nn.Module]) -> bool:
    r = route(cls)
    return (r.verdict is Verdict.UNREADABLE or bool(r.checked)) and not verified(cls)


def mark(layer: nn.Module) -> None:
    """Record that ``layer``'s policy forward ran (called by the managed forward)."""
    if id(layer) in ACTIVE:
        ACTIVE[id(layer)] = True


def refresh(layer: nn.Module) -> None:
    """Install the check on a managed layer that needs it; remove it everywhere else."""
    state = state_of(layer)
    for hooks, fn in ((layer._forward_pre_hooks, _before), (layer._forward_hooks, _after)):
        for key in [k for k, f in hooks.items() if f is fn]:
            del hooks[key]
    if state is not None and _needs_watch(state.original.cls):
        layer.register_forward_pre_hook(_before)
        layer.register_forward_hook(_after)


def _before(module: nn.Module, args: Any) -> None:
    state = state_of(module)
    assert state is not None
    cls = state.original.cls
    reason = refusal(cls)
    if reason is not None:
        raise LayerError(f"layer {state.label(module)!r}: {reason}")
    ACTIVE[id(module)] = False
    _SAVED[id(module)] = [b.clone() for b in module.buffers(recurse=False)]


def _after(module: nn.Module, args: Any, output: Any) -> None:
    state = state_of(module)
    assert state is not None
    cls = state.original.cls
    reached = ACTIVE.pop(id(module), False)
    saved = _SAVED.pop(id(module), [])
    if reached:
        _VERIFIED.add((cls, module.training))
        refresh(module)
        return
    for buf, old in zip(module.buffers(recurse=False), saved, strict=True):
        buf.copy_(old)
    phase = "train()" if module.training else "eval()"
    reason = (
        f"{cls.__name__}.forward does not run BatchNorm's forward (super().forward(x)) in "
        f"{phase}, so "
        f"bnkit cannot apply a policy to it; declare what it does around the normalization "
        f"with bnkit.register_layer({cls.__name__}, after=...), or call bnkit.unfreeze on it"
    )
    _REFUSED[cls] = reason
    raise LayerError(f"layer {state.label(module)!r}: {reason} (its buffers were put back)")
