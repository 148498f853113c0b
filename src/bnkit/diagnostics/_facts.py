"""What a BatchNorm layer is and does right now, read once for reports, checks and watches.

The behaviour comes from the layer's policy (:func:`bnkit.policy_of`) and its *current*
phase. A plain layer whose flags no policy describes (gamma and beta with different
``requires_grad``, a ``momentum`` outside [0, 1]) is read the way ``nn.BatchNorm`` itself
reads its flags, and the reason no policy fits is kept as a note.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parameter import is_lazy
from torch.optim.swa_utils import AveragedModel

from bnkit.apply import policy_of
from bnkit.errors import DiagnosticError, LayerError
from bnkit.layers.managed import is_managed
from bnkit.layers.select import bn_layers, unwrap
from bnkit.policy import Affine, Policy

__all__ = [
    "Behaviour",
    "LayerFacts",
    "affine_params",
    "affine_state",
    "as_module",
    "averaged_count",
    "batches_tracked",
    "behaviour",
    "facts",
    "is_bnkit",
    "layer_facts",
    "never_updated",
    "running_stats",
    "trained_affine",
]


@dataclasses.dataclass(frozen=True)
class Behaviour:
    """What a layer does on a forward in one phase."""

    batch: bool | None
    """Normalizes with batch statistics (False: running statistics; None: unknown layer)."""
    updates: bool | None
    """Its running statistics change on a forward."""
    text: str
    """One line, e.g. ``normalize with batch stats, EMA update (momentum 0.1), ...``."""


@dataclasses.dataclass(frozen=True)
class LayerFacts:
    """One BatchNorm layer of a model, as it is now."""

    name: str
    layer: nn.Module
    policy: Policy | None
    """Its bnkit policy, or the policy its flags amount to; None when none describes them."""
    note: str
    """Why no policy describes the layer (empty when one does)."""
    bnkit: bool
    """bnkit manages the layer (a policy was applied, or it is a bnkit frozen layer)."""
    training: bool
    now: Behaviour
    """Its behaviour in its current phase."""

    def in_phase(self, training: bool) -> Behaviour:
        """Its behaviour in the given phase."""
        return behaviour(self.layer, training, self.policy)

    @property
    def affine_frozen(self) -> bool:
        """No gamma/beta of the layer can receive a gradient (vacuous without gamma/beta)."""
        return not any(trainable for _, _, trainable in affine_params(self.layer, self.policy))


def as_module(model: object, call: str) -> nn.Module:
    """The (unwrapped) model, or a DiagnosticError saying that ``call`` needs a module."""
    return unwrap(model, call, DiagnosticError)


def is_bnkit(layer: nn.Module) -> bool:
    """Whether bnkit decides the layer's behaviour (managed, or a frozen bnkit layer)."""
    return is_managed(layer) or isinstance(getattr(layer, "_bnkit_frozen_policy", None), Policy)


def _policy(layer: nn.Module) -> tuple[Policy | None, str]:
    try:
        return policy_of(layer), ""
    except LayerError as err:
        return None, str(err)


def behaviour(layer: nn.Module, training: bool, policy: Policy | None) -> Behaviour:
    """The layer's behaviour in a phase, from its policy (or, without one, its native flags)."""
    if policy is not None:
        momentum = getattr(layer, "momentum", "")
        return Behaviour(
            batch=policy.uses_batch_stats(training),
            updates=policy.updates(training, momentum),
            text=policy.describe(training, momentum),
        )
    if not isinstance(layer, _BatchNorm):
        return Behaviour(None, None, f"unknown ({type(layer).__name__} has no bnkit policy)")
    has = layer.running_mean is not None and layer.running_var is not None
    batch = training or not has
    m = layer.momentum
    updates = training and layer.track_running_stats and has and m != 0
    upd = "no update"
    if updates:
        upd = "cumulative update" if m is None else f"EMA update (momentum {m:g})"
    stats = "batch" if batch else "running"
    state = affine_state(layer, None)
    aff = state if "," in state else f"gamma/beta {state}"
    return Behaviour(batch, updates, f"normalize with {stats} stats, {upd}, {aff}")


def affine_state(layer: nn.Module, policy: Policy | None) -> str:
    """``"trainable"``, ``"frozen"``, ``"none"`` (no gamma/beta), or each parameter's state."""
    params = affine_params(layer, policy)
    if not params:
        return "none"
    flags = {trainable for _, _, trainable in params}
    if len(flags) == 1:
        return "trainable" if flags.pop() else "frozen"
    return ", ".join(
        f"{'gamma' if n == 'weight' else 'beta'} {'trainable' if t else 'frozen'}"
        for n, _, t in params
    )


def affine_params(layer: nn.Module, policy: Policy | None) -> list[tuple[str, nn.Parameter, bool]]:
    """``(name, parameter, effectively trainable)`` for gamma (``weight``) and beta (``bias``).

    A parameter is effectively trainable when it requires a gradient and the layer's policy does
    not freeze the affine part (a managed frozen layer detaches gamma/beta in its forward).
    Gamma/beta held as buffers (bnkit's frozen layers) are not parameters and are left out.
    """
    frozen = policy is not None and policy.affine is Affine.FROZEN and is_bnkit(layer)
    out = []
    for name in ("weight", "bias"):
        p = getattr(layer, name, None)
        if isinstance(p, nn.Parameter):
            out.append((name, p, bool(p.requires_grad) and not frozen))
    return out


def running_stats(layer: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    """The layer's ``running_mean`` and ``running_var`` (None when it has none, or they are
    not materialized yet)."""
    mean, var = getattr(layer, "running_mean", None), getattr(layer, "running_var", None)
    if not isinstance(mean, Tensor) or not isinstance(var, Tensor):
        return None, None
    if is_lazy(mean) or is_lazy(var):
        return None, None  # an unmaterialized lazy layer
    return mean, var


def batches_tracked(layer: nn.Module) -> int | None:
    """The layer's ``num_batches_tracked`` (None when it has none)."""
    nbt = getattr(layer, "num_batches_tracked", None)
    return int(nbt) if isinstance(nbt, Tensor) and not is_lazy(nbt) else None


def never_updated(layer: nn.Module) -> bool | None:
    """Whether the running statistics still hold their initial values (mean 0, var 1, counter 0).

    None when the layer has no running statistics. Statistics loaded from a checkpoint or set by
    hand count as updated even when the counter is 0.
    """
    mean, var = running_stats(layer)
    if mean is None or var is None:
        return None
    if batches_tracked(layer) not in (None, 0):
        return False
    with torch.no_grad():
        return bool(torch.all(mean == 0)) and bool(torch.all(var == 1))


def layer_facts(name: str, layer: nn.Module) -> LayerFacts:
    """The facts of one layer."""
    policy, note = _policy(layer)
    return LayerFacts(
        name=name,
        layer=layer,
        policy=policy,
        note=note,
        bnkit=is_bnkit(layer),
        training=layer.training,
        now=behaviour(layer, layer.training, policy),
    )


def facts(model: nn.Module) -> list[LayerFacts]:
    """The facts of every BatchNorm layer of the (unwrapped) model, in module order."""
    return [layer_facts(name, layer) for name, layer in bn_layers(unwrap(model))]


def trained_affine(layer: nn.Module) -> bool:
    """Whether gamma or beta differ across channels: trained (or averaged, or loaded), since
    every initialization PyTorch and the model zoos use sets one value for all channels."""
    for name in ("weight", "bias"):
        t = getattr(layer, name, None)
        if isinstance(t, Tensor) and not is_lazy(t) and t.numel() > 1:
            with torch.no_grad():
                if bool(torch.isfinite(t).all()) and bool(t.amax() != t.amin()):
                    return True
    return False


def averaged_count(model: nn.Module) -> int | None:
    """How many models ``torch.optim.swa_utils.AveragedModel`` averaged into ``model`` (None
    when ``model`` is not one)."""
    if not isinstance(model, AveragedModel):
        return None
    return int(model.n_averaged)
