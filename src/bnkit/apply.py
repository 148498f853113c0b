"""Applying policies to models: ``apply``, ``freeze``, ``unfreeze``, ``using``, ``policy_of``.

A policy applied to a layer stays until bnkit changes it: ``model.train()`` and
``model.eval()`` only set the phase, and the policy maps the phase to a behaviour. Parameters
and buffers keep their identity (an optimizer built before still trains the same tensors) and
``state_dict`` is unchanged (checkpoints load ``strict=True`` both ways).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TypeVar

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.lazy import LazyModuleMixin

from bnkit import _managed, _probe
from bnkit._surgery import LayerState, Where, bn_layers, capture, restore, select
from bnkit.errors import LayerError, PolicyError
from bnkit.policy import DEFAULT_MOMENTUM, Affine, Normalize, Phase, Policy, Update
from bnkit.presets import resolve

__all__ = ["apply", "bn_layers", "freeze", "managed_layers", "policy_of", "unfreeze", "using"]

M = TypeVar("M", bound=nn.Module)


def apply(model: M, policy: Policy | str, where: Where = None) -> M:
    """Give the selected BatchNorm layers a policy; it holds through ``train()``/``eval()``.

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
    layers = _targets(model, where)
    for name, layer in layers:
        _check_manageable(layer, pol, name)
    for name, layer in layers:
        _managed.manage(layer, pol, name)
    return model


def freeze(model: M, stats: bool = True, affine: bool = True, where: Where = None) -> M:
    """Freeze the running statistics and/or gamma/beta of the selected layers.

    ``stats=True`` makes a layer normalize with its running statistics and never update them;
    ``affine=True`` stops gradients to gamma/beta. The other axes of each layer's current
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
    layers = _targets(model, where)
    targets = []
    for name, layer in layers:
        pol = policy_of(layer)
        if stats:
            pol = pol.replace(
                normalize=Normalize.RUNNING,
                update=Update.NEVER,
                momentum=DEFAULT_MOMENTUM,
                update_in=Phase.TRAIN,
            )
        if affine:
            pol = pol.replace(affine=Affine.FROZEN)
        _check_manageable(layer, pol, name)
        targets.append((name, layer, pol))
    for name, layer, pol in targets:
        _managed.manage(layer, pol, name)
    return model


def unfreeze(model: M, where: Where = None) -> M:
    """Return the selected layers to exactly how they behaved before bnkit touched them.

    Class, ``momentum`` and ``requires_grad`` come back; running statistics keep their
    current values (they are data, not behaviour). Layers bnkit does not manage are left alone.
    """
    for _, layer in select(model, where):
        original = getattr(layer, "_bnkit_original", None)
        if isinstance(original, LayerState):
            restore(layer, original)
    return model


@contextlib.contextmanager
def using(model: M, policy: Policy | str, where: Where = None) -> Iterator[M]:
    """Apply a policy inside a ``with`` block; restore each layer's previous policy on exit.

    The previous state comes back also when the block raises.

    Examples:
        >>> import torch, torch.nn as nn, bnkit
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
        >>> with bnkit.using(model, "batch_stats"):
        ...     _ = model.eval()(torch.randn(8, 4))
        >>> bnkit.policy_of(model[1])
        bnkit.preset('pytorch')
    """
    pol = resolve(policy)
    layers = _targets(model, where)
    for name, layer in layers:
        _check_manageable(layer, pol, name)
    saved = [(layer, capture(layer)) for _, layer in layers]
    try:
        for name, layer in layers:
            _managed.manage(layer, pol, name)
        yield model
    finally:
        for layer, state in saved:
            _probe.remove_probe(layer)
            restore(layer, state)


def policy_of(layer: nn.Module) -> Policy:
    """The policy a BatchNorm layer follows: its bnkit policy, or the one its flags amount to.

    For a layer bnkit does not manage, the flags map as ``nn.BatchNorm`` behaves: no buffers
    is ``batch_stats``; ``momentum=None`` is a cumulative update; ``track_running_stats=False``
    (set after construction) or ``momentum=0`` is no update; ``requires_grad=False`` on
    gamma and beta is a frozen affine.

    Raises:
        LayerError: not a BatchNorm layer, or flags no policy describes (``momentum`` outside
            [0, 1], or only one of gamma/beta frozen).
    """
    policy = getattr(layer, "_bnkit_policy", None)
    if isinstance(policy, Policy) and _managed.is_managed(layer):
        return policy
    frozen = getattr(layer, "_bnkit_frozen_policy", None)
    if isinstance(frozen, Policy):
        return frozen
    if not isinstance(layer, _BatchNorm):
        raise LayerError(f"expected a BatchNorm layer (got {type(layer).__name__})")
    return _native_policy(layer)


def managed_layers(model: nn.Module) -> list[tuple[str, Policy]]:
    """The layers bnkit manages in ``model``, with their policies."""
    return [
        (name, policy_of(layer)) for name, layer in bn_layers(model) if _managed.is_managed(layer)
    ]


# --------------------------------------------------------------------------- internals
def _targets(model: nn.Module, where: Where) -> list[tuple[str, nn.Module]]:
    """The selected layers; without ``where``, frozen exports (fixed by nature) are skipped."""
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


def _native_policy(layer: _BatchNorm) -> Policy:
    flags = (_grad_flag(layer, "weight"), _grad_flag(layer, "bias"))
    present = [f for f in flags if f is not None]
    if present and len(set(present)) > 1:
        raise LayerError(
            f"{type(layer).__name__} has weight.requires_grad={flags[0]} but "
            f"bias.requires_grad={flags[1]}; bnkit's affine axis freezes both or neither — "
            "apply a policy to choose"
        )
    affine = Affine.FROZEN if present and not present[0] else Affine.TRAINABLE
    if layer.running_mean is None or layer.running_var is None:
        return Policy(normalize=Normalize.BATCH, update=Update.NEVER, affine=affine)
    momentum = layer.momentum
    if not layer.track_running_stats or momentum == 0:
        return Policy(update=Update.NEVER, affine=affine)
    if momentum is None:
        return Policy(update=Update.CUMULATIVE, affine=affine)
    if not 0 < momentum <= 1:
        raise LayerError(
            f"{type(layer).__name__} has momentum={momentum}, outside the [0, 1] that bnkit's "
            "policies describe"
        )
    return Policy(momentum=momentum, affine=affine)


def _grad_flag(layer: nn.Module, name: str) -> bool | None:
    param = getattr(layer, name, None)
    return None if param is None else bool(param.requires_grad)


def _check_manageable(layer: nn.Module, policy: Policy, name: str) -> None:
    label = name or type(layer).__name__
    if not isinstance(layer, _BatchNorm):
        raise LayerError(
            f"layer {label!r} is a {type(layer).__name__}, which bnkit cannot give a policy; "
            "convert it back first (bnkit.from_frozen)"
        )
    if isinstance(layer, LazyModuleMixin) and layer.has_uninitialized_params():
        raise LayerError(
            f"layer {label!r} is an unmaterialized {type(layer).__name__}; run one forward "
            "pass first so it knows num_features"
        )
    if policy.needs_running_stats and (layer.running_mean is None or layer.running_var is None):
        raise LayerError(
            f"layer {label!r} has no running statistics (built with track_running_stats=False), "
            f"but policy {policy!r} needs them; use 'batch_stats', or rebuild the layer with "
            "track_running_stats=True"
        )
    if policy.update is Update.CUMULATIVE and layer.num_batches_tracked is None:
        raise LayerError(
            f"layer {label!r} has no num_batches_tracked buffer, which update='cumulative' counts"
        )
