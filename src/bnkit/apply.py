"""Applying policies to models: ``apply``, ``freeze``, ``unfreeze``, ``using``, ``policy_of``.

A policy applied to a layer stays until bnkit changes it: ``model.train()`` and
``model.eval()`` only set the phase, and the policy maps the phase to a behaviour. Parameters
and buffers keep their identity (an optimizer built before still trains the same tensors) and
``state_dict`` is unchanged (checkpoints load ``strict=True`` both ways).

Threads: forwards of a managed model may run in several threads at once. Changing policies is
not meant to race with them, and a layer inside a :func:`using` block of one thread cannot be
given a policy by another thread (nor enter another thread's ``using``) until the block ends:
that is refused with a :class:`~bnkit.LayerError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TypeVar

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit.errors import LayerError, PolicyError
from bnkit.layers.manage import hold, manage_all, release
from bnkit.layers.select import Where, bn_layers, select, targets
from bnkit.layers.state import state_of
from bnkit.layers.surgery import capture, restore
from bnkit.policy import Affine, Normalize, Phase, Policy, Update, resolve

__all__ = ["apply", "bn_layers", "freeze", "managed_layers", "policy_of", "unfreeze", "using"]

M = TypeVar("M", bound=nn.Module)


def apply(model: M, policy: Policy | str, where: Where = None) -> M:
    """Give the selected BatchNorm layers a policy; it holds through ``train()``/``eval()``.

    A policy that names a ``momentum`` sets the layers' ``momentum`` while it holds; one that
    does not keeps each layer's own (``pytorch``, ``frozen_affine``, ``ghost`` ...).

    Args:
        model: a model (or a single BatchNorm layer); DDP and compiled models are unwrapped.
        policy: a :class:`~bnkit.Policy` or a preset name.
        where: which layers (name glob, module type, or ``predicate(name, layer)``); all if None.

    Returns:
        The same model, changed in place.

    Raises:
        PolicyError: unknown preset name.
        SelectionError: ``where`` matches no BatchNorm layer.
        LayerError: a selected layer cannot take the policy (nothing is changed then).

    Examples:
        >>> import torch.nn as nn, bnkit
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
        >>> _ = bnkit.apply(model, "frozen")
        >>> bnkit.policy_of(model.train()[1])
        bnkit.preset('frozen')
    """
    pol = resolve(policy)
    manage_all([(name, layer, pol) for name, layer in targets(model, where)])
    return model


def freeze(model: M, stats: bool = True, affine: bool = True, where: Where = None) -> M:
    """Freeze the running statistics and/or gamma/beta of the selected layers.

    ``stats=True`` makes a layer normalize with its running statistics and never update them;
    ``affine=True`` stops gradients to gamma/beta (both of them, also when only one was frozen
    before; :func:`unfreeze` brings the mix back). The other axes of each layer's current
    policy are kept, so on plain layers ``freeze()`` gives ``frozen``,
    ``freeze(affine=False)`` gives ``frozen_stats`` and ``freeze(stats=False)`` gives
    ``frozen_affine``.

    Raises:
        PolicyError: both ``stats`` and ``affine`` are False (nothing to freeze).
    """
    if not stats and not affine:
        raise PolicyError(
            "freeze(stats=False, affine=False) freezes nothing; use bnkit.unfreeze(model) "
            "to restore the layers"
        )
    chosen = []
    for name, layer in targets(model, where):
        pol = _current_policy(layer, name, any_affine=affine)
        if stats:
            pol = pol.replace(
                normalize=Normalize.RUNNING,
                update=Update.NEVER,
                momentum=None,
                update_in=Phase.TRAIN,
            )
        if affine:
            pol = pol.replace(affine=Affine.FROZEN)
        chosen.append((name, layer, pol))
    manage_all(chosen)
    return model


def unfreeze(model: M, where: Where = None) -> M:
    """Return the selected layers to exactly how they behaved before bnkit touched them.

    Class, ``momentum`` and ``requires_grad`` come back; running statistics keep their
    current values (they are data, not behaviour). Layers bnkit does not manage are left alone.
    """
    release(select(model, where))
    return model


@contextlib.contextmanager
def using(model: M, policy: Policy | str, where: Where = None) -> Iterator[M]:
    """Apply a policy inside a ``with`` block; restore each layer's previous policy on exit.

    The previous state comes back also when the block raises. Blocks nest within a thread;
    another thread cannot touch the layers until the block ends (see the module notes).

    Examples:
        >>> import torch, torch.nn as nn, bnkit
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        >>> with bnkit.using(model, "batch_stats"):
        ...     _ = model.eval()(torch.randn(8, 4))
        >>> bnkit.policy_of(model[1])
        bnkit.preset('pytorch')
    """
    pol = resolve(policy)
    chosen = [(name, layer, pol) for name, layer in targets(model, where)]
    layers = [layer for _, layer, _ in chosen]
    with hold([(name, layer) for name, layer, _ in chosen], "using"):
        saved = [(layer, capture(layer)) for layer in layers]
        try:
            manage_all(chosen)
            yield model
        finally:
            for layer, snap in saved:
                restore(layer, snap)


def policy_of(layer: nn.Module) -> Policy:
    """The policy a BatchNorm layer follows: its bnkit policy, or the one its flags amount to.

    For a layer bnkit does not manage, the flags map as ``nn.BatchNorm`` behaves: no buffers
    is ``batch_stats``; ``momentum=None`` is a cumulative update; ``track_running_stats=False``
    (set after construction) or ``momentum=0`` is no update; any other momentum is an EMA with
    the layer's own momentum; ``requires_grad=False`` on gamma and beta is a frozen affine.

    Raises:
        LayerError: not a BatchNorm layer, or flags no policy describes (``momentum`` outside
            [0, 1], or only one of gamma/beta frozen).
    """
    state = state_of(layer)
    if state is not None:
        return state.policy
    frozen = getattr(layer, "_bnkit_frozen_policy", None)
    if isinstance(frozen, Policy):
        return frozen
    if not isinstance(layer, _BatchNorm):
        raise LayerError(f"expected a BatchNorm layer (got {type(layer).__name__})")
    return _native_policy(layer, type(layer).__name__)


def managed_layers(model: nn.Module) -> list[tuple[str, Policy]]:
    """The layers bnkit manages in ``model``, with their policies."""
    found = []
    for name, layer in bn_layers(model):
        state = state_of(layer)
        if state is not None:
            found.append((name, state.policy))
    return found


# --------------------------------------------------------------------------- internals
def _current_policy(layer: nn.Module, name: str, *, any_affine: bool) -> Policy:
    """``policy_of(layer)``; with ``any_affine`` a mix of frozen gamma/beta is no error."""
    state = state_of(layer)
    if state is not None:
        return state.policy
    if not isinstance(layer, _BatchNorm):
        return policy_of(layer)  # raises the helpful error
    return _native_policy(layer, name or type(layer).__name__, any_affine=any_affine)


def _native_policy(layer: _BatchNorm, label: str, *, any_affine: bool = False) -> Policy:
    flags = (_grad_flag(layer, "weight"), _grad_flag(layer, "bias"))
    present = [f for f in flags if f is not None]
    if present and len(set(present)) > 1 and not any_affine:
        raise LayerError(
            f"layer {label!r} ({type(layer).__name__}) has weight.requires_grad={flags[0]} but "
            f"bias.requires_grad={flags[1]}; bnkit's affine axis freezes both or neither — "
            "apply a policy to choose (bnkit.freeze freezes both, and unfreeze restores the mix)"
        )
    affine = Affine.FROZEN if present and not all(present) else Affine.TRAINABLE
    if layer.running_mean is None or layer.running_var is None:
        return Policy(normalize=Normalize.BATCH, update=Update.NEVER, affine=affine)
    momentum = layer.momentum
    if not layer.track_running_stats or momentum == 0:
        return Policy(update=Update.NEVER, affine=affine)
    if momentum is None:
        return Policy(update=Update.CUMULATIVE, affine=affine)
    if not 0 < momentum <= 1:
        raise LayerError(
            f"layer {label!r} ({type(layer).__name__}) has momentum={momentum}, outside the "
            "[0, 1] that bnkit's policies describe"
        )
    return Policy(affine=affine)


def _grad_flag(layer: nn.Module, name: str) -> bool | None:
    param = getattr(layer, name, None)
    return None if param is None else bool(param.requires_grad)
