"""Giving a layer a policy, and the checks that come first.

:func:`manage_all` is the only way a policy reaches layers: every layer is checked before any
changes, so a refusal leaves the model as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Iterator, Sequence

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit.errors import LayerError
from bnkit.layers.adapters import Verdict, route
from bnkit.layers.managed import managed_class, original_class
from bnkit.layers.probe import refresh, refusal
from bnkit.layers.select import lazy_reason
from bnkit.layers.state import ATTR, ManagedState, plan_for, state_of
from bnkit.layers.surgery import original_of, restore
from bnkit.policy import Affine, Policy, Update

__all__ = ["check_manageable", "hold", "manage", "manage_all", "release"]

_LOCK = threading.Lock()
_HELD: dict[int, tuple[int, int, str]] = {}
"""``id(layer) -> (thread id, depth, block)`` for layers inside a block of some thread."""


def _check_not_held(layer: nn.Module, label: str) -> None:
    owner = _HELD.get(id(layer))
    if owner is not None and owner[0] != threading.get_ident():
        raise LayerError(
            f"layer {label!r} is inside a bnkit.{owner[2]} block of another thread; policies "
            "belong to layers, not threads, so it cannot change until that block ends (give "
            "each thread its own copy of the model to run different policies at once)"
        )


@contextlib.contextmanager
def hold(layers: Sequence[tuple[str, nn.Module]], block: str) -> Iterator[None]:
    """Reserve the ``(name, layer)`` pairs for the current thread's ``block`` (``"using"``,
    ``"mask"`` ...); nested blocks in one thread are fine."""
    me = threading.get_ident()
    with _LOCK:
        for name, layer in layers:
            _check_not_held(layer, name or type(layer).__name__)
        for _, layer in layers:
            _, depth, outer = _HELD.get(id(layer), (me, 0, block))
            _HELD[id(layer)] = (me, depth + 1, outer)
    try:
        yield
    finally:
        with _LOCK:
            for _, layer in layers:
                _, depth, outer = _HELD[id(layer)]
                if depth == 1:
                    del _HELD[id(layer)]
                else:
                    _HELD[id(layer)] = (me, depth - 1, outer)


def check_manageable(layer: nn.Module, policy: Policy, name: str) -> None:
    """Raise :class:`~bnkit.LayerError` if ``layer`` cannot follow ``policy`` (nothing changes)."""
    label = name or type(layer).__name__
    _check_not_held(layer, label)
    if not isinstance(layer, _BatchNorm):
        raise LayerError(
            f"layer {label!r} is a {type(layer).__name__}, which bnkit cannot give a policy; "
            "convert it back first (bnkit.from_frozen)"
        )
    lazy = lazy_reason(layer)
    if lazy is not None:
        raise LayerError(f"layer {label!r} {lazy}")
    cls = original_class(layer)
    r = route(cls)
    if r.verdict is Verdict.FOREIGN:
        assert r.owner is not None
        raise LayerError(
            f"layer {label!r}: {r.owner.__name__}.forward computes BatchNorm itself (it never "
            f"calls super().forward(x)), so a policy would be ignored; declare what it does "
            f"around the normalization with bnkit.register_layer({r.owner.__name__}, "
            "after=...), or make its forward call super().forward(x)"
        )
    refused = refusal(cls)
    if refused is not None:
        raise LayerError(f"layer {label!r}: {refused}")
    if policy.needs_running_stats and (layer.running_mean is None or layer.running_var is None):
        raise LayerError(
            f"layer {label!r} has no running statistics (built with track_running_stats=False), "
            f"but policy {policy!r} needs them; use 'batch_stats', or rebuild the layer with "
            "track_running_stats=True"
        )
    own = layer.momentum
    keeps_own = policy.update is Update.EMA and policy.momentum is None
    if keeps_own and own is not None and not 0 <= own <= 1:
        raise LayerError(
            f"layer {label!r} has momentum={own}, outside [0, 1], and policy {policy!r} updates "
            "the running statistics with the layer's own momentum; name one, e.g. "
            "bnkit.preset('pytorch', momentum=0.1)"
        )
    cumulative = policy.update is Update.CUMULATIVE or (
        policy.update is Update.EMA and policy.momentum is None and layer.momentum is None
    )
    if cumulative and layer.num_batches_tracked is None:
        raise LayerError(
            f"layer {label!r} has no num_batches_tracked buffer, which a cumulative update "
            "(update='cumulative', or momentum=None) counts"
        )


def manage(layer: nn.Module, policy: Policy, name: str) -> None:
    """Make ``layer`` follow ``policy`` (the caller has run :func:`check_manageable`).

    A policy that names a ``momentum`` sets the layer's; a cumulative one sets it to None (as
    ``nn.BatchNorm`` spells it); otherwise the layer's own is kept. Gradients to gamma/beta follow
    the affine axis. The previous state object is replaced, never changed.
    """
    assert isinstance(layer, _BatchNorm)
    old = state_of(layer)
    original = old.original if old is not None else original_of(layer)
    if old is None:
        layer.__class__ = managed_class(type(layer))
    if policy.momentum is not None:
        vars(layer)["momentum"] = policy.momentum
    elif policy.update is Update.CUMULATIVE:
        vars(layer)["momentum"] = None
    elif old is not None and (
        old.policy.momentum is not None or old.policy.update is Update.CUMULATIVE
    ):
        vars(layer)["momentum"] = original.momentum  # the layer's own again
    trainable = policy.affine is Affine.TRAINABLE
    for param in (layer.weight, layer.bias):
        if param is not None:
            param.requires_grad_(trainable)
    if old is None:
        vars(layer)[ATTR] = ManagedState.make(policy, name, original)
    else:  # a new policy; synchronization, held-back updates and a mask stay
        train, evaluate = plan_for(policy, True), plan_for(policy, False)
        new = dataclasses.replace(old, policy=policy, name=name, train=train, eval=evaluate)
        vars(layer)[ATTR] = new
    refresh(layer)


def manage_all(targets: Sequence[tuple[str, nn.Module, Policy]]) -> None:
    """Check every ``(name, layer, policy)``, then manage them all."""
    for name, layer, policy in targets:
        check_manageable(layer, policy, name)
    for name, layer, policy in targets:
        manage(layer, policy, name)


def release(layers: Sequence[tuple[str, nn.Module]]) -> None:
    """Put managed layers back as they were before bnkit (others are left alone)."""
    for name, layer in layers:
        _check_not_held(layer, name or type(layer).__name__)
    for _, layer in layers:
        state = state_of(layer)
        if state is not None:
            restore(layer, state.original)
