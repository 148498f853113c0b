"""Module surgery: capture and restore what bnkit may change on a layer, and swap layers.

Every bnkit call that changes a model goes through :func:`capture` / :func:`restore` (a layer's
own state) or :func:`replace_modules` (swapping a layer for another), so that what is saved,
copied and restored is decided in one place.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch.nn as nn

from bnkit.layers.probe import refresh
from bnkit.layers.select import unwrap
from bnkit.layers.state import ATTR, ManagedState, Original, state_of

__all__ = ["Snapshot", "capture", "original_of", "replace_modules", "restore"]


def _requires_grad(module: nn.Module, name: str) -> bool | None:
    param = getattr(module, name, None)
    return None if param is None else bool(param.requires_grad)


def original_of(module: nn.Module) -> Original:
    """The class, momentum and requires_grad of ``module`` as they are now."""
    return Original(
        cls=type(module),
        momentum=getattr(module, "momentum", None),
        requires_grad=(_requires_grad(module, "weight"), _requires_grad(module, "bias")),
    )


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A layer's bnkit-visible state: its current class/momentum/requires_grad and its
    :class:`~bnkit.layers.state.ManagedState` (None when unmanaged)."""

    now: Original
    managed: ManagedState | None


def capture(module: nn.Module) -> Snapshot:
    """Snapshot what bnkit may change on ``module``."""
    return Snapshot(original_of(module), state_of(module))


def restore(module: nn.Module, snap: Snapshot | Original) -> None:
    """Put ``module`` back exactly as captured (parameters and buffers are untouched).

    An :class:`~bnkit.layers.state.Original` restores the layer to unmanaged.
    """
    now, managed = (snap.now, snap.managed) if isinstance(snap, Snapshot) else (snap, None)
    module.__class__ = now.cls
    if managed is None:
        vars(module).pop(ATTR, None)
    else:
        vars(module)[ATTR] = managed
    if hasattr(module, "momentum"):
        vars(module)["momentum"] = now.momentum
    for name, flag in zip(("weight", "bias"), now.requires_grad, strict=True):
        param = getattr(module, name, None)
        if param is not None and flag is not None:
            param.requires_grad_(flag)
    refresh(module)


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
        # _modules, not named_children(): a layer registered twice in one parent
        # (self.b = self.a) is replaced under both names
        for child_name, child in list(parent._modules.items()):
            if child is None:
                continue
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            if id(child) in done:
                setattr(parent, child_name, done[id(child)])
            elif predicate(name, child):
                new = factory(name, child)
                new.train(child.training)
                done[id(child)] = new
                setattr(parent, child_name, new)
    return model
