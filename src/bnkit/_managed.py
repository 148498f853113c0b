"""Managed BatchNorm layers: the policy lives on the layer and its forward follows it.

A layer keeps its identity: bnkit swaps its class for a subclass built on the fly that puts
:class:`PolicyForward` just above PyTorch's own ``forward`` in the method resolution order::

    BatchNorm2d (managed) -> [user subclass ->] BatchNorm2d -> PolicyForward -> _BatchNorm

so a user subclass that calls ``super().forward(x)`` (to add an activation, say) keeps its
behaviour, while parameters, buffers, ``state_dict`` keys and hooks stay exactly as they were.
The forward resolves the policy and the phase into a :class:`~bnkit._running.Plan` (computed
once, when the policy is applied) and runs the matching path of :mod:`bnkit._strategy` /
:mod:`bnkit._running` on :mod:`bnkit.functional`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit import _probe, _sync
from bnkit import functional as BF
from bnkit._running import Plan
from bnkit._strategy import StrategyForward
from bnkit._surgery import LayerState, capture
from bnkit.errors import InputError
from bnkit.policy import Affine, Normalize, Policy, Update

__all__ = ["Plan", "PolicyForward", "is_managed", "manage", "managed_class", "plan_for"]


def plan_for(policy: Policy, training: bool) -> Plan:
    """Resolve a policy and a phase into a :class:`Plan`."""
    return Plan(
        mode=policy.stats_in(training),
        update=policy.updates(training),
        cumulative=policy.update is Update.CUMULATIVE,
        momentum=policy.momentum,
        frozen_affine=policy.affine is Affine.FROZEN,
    )


def manage(layer: nn.Module, policy: Policy, name: str) -> None:
    """Make ``layer`` follow ``policy`` (the caller has checked that it can)."""
    assert isinstance(layer, _BatchNorm)
    state = vars(layer)
    if not is_managed(layer):
        state["_bnkit_original"] = capture(layer)
        layer.__class__ = managed_class(type(layer))
    original: LayerState = state["_bnkit_original"]
    state["_bnkit_policy"] = policy
    state["_bnkit_name"] = name
    state["_bnkit_plan_train"] = plan_for(policy, True)
    state["_bnkit_plan_eval"] = plan_for(policy, False)
    if policy.update is Update.EMA:
        state["momentum"] = policy.momentum
    elif policy.update is Update.CUMULATIVE:
        state["momentum"] = None
    else:
        state["momentum"] = original.momentum
    trainable = policy.affine is Affine.TRAINABLE
    for param in (layer.weight, layer.bias):
        if param is not None:
            param.requires_grad_(trainable)
    _probe.install_probe(layer, original_class(layer))


# Input dims accepted by PyTorch's own classes, keyed by their _check_input_dim.
_NATIVE_DIMS: dict[Any, tuple[int, int]] = {
    nn.BatchNorm1d._check_input_dim: (2, 3),
    nn.BatchNorm2d._check_input_dim: (4, 4),
    nn.BatchNorm3d._check_input_dim: (5, 5),
    nn.SyncBatchNorm._check_input_dim: (2, 64),
}
_CLASS_FOR_DIM = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}
_SHAPE_FOR_DIM = {2: "(N, C)", 3: "(N, C, L)", 4: "(N, C, H, W)", 5: "(N, C, D, H, W)"}


class PolicyForward(StrategyForward):
    """The forward of every managed layer (never instantiated directly)."""

    _bnkit_plan_train: Plan
    _bnkit_plan_eval: Plan
    _bnkit_dims: tuple[int, int] | None = None
    _bnkitprobe_on: bool = False

    def forward(self, input: Tensor) -> Tensor:
        plan = self._bnkit_plan_train if self.training else self._bnkit_plan_eval
        self._bnkit_check_input(input, plan)
        if self._bnkitprobe_on:
            vars(self)["_bnkitprobe_hit"] = True
        weight: Tensor | None = self.weight
        bias: Tensor | None = self.bias
        if plan.frozen_affine:
            weight = None if weight is None else weight.detach()
            bias = None if bias is None else bias.detach()
        mode = plan.mode
        if mode is Normalize.BATCH or mode is Normalize.RUNNING:
            return self._bnkit_plain(input, weight, bias, plan, batch=mode is Normalize.BATCH)
        if mode is Normalize.RENORM:
            return self._bnkit_renorm(input, weight, bias, plan)
        if mode is Normalize.GHOST:
            return self._bnkit_ghost(input, weight, bias, plan)
        return self._bnkit_prior(input, weight, bias, plan)

    def _bnkit_check_input(self, x: Tensor, plan: Plan) -> None:
        dims = self._bnkit_dims
        if dims is None:
            self._check_input_dim(x)  # type: ignore[no-untyped-call]
        elif not dims[0] <= x.dim() <= dims[1]:
            want = f"{dims[0]}D" if dims[0] == dims[1] else f"{dims[0]}D or {dims[1]}D"
            hint = ""
            if x.dim() in _CLASS_FOR_DIM:
                hint = f"; use {_CLASS_FOR_DIM[x.dim()]} for {_SHAPE_FOR_DIM[x.dim()]} input"
            raise InputError(
                f"layer {self._bnkit_label()!r} expected {want} input (got {x.dim()}D input){hint}"
            )
        if x.shape[1] != self.num_features:
            raise InputError(
                f"layer {self._bnkit_label()!r} expected {self.num_features} channels in dim 1 "
                f"(got {x.shape[1]}, input shape {tuple(x.shape)}); check the out_channels or "
                "out_features of the layer before it"
            )
        if plan.mode is Normalize.RUNNING and not plan.update:
            return
        if self._bnkit_group() is not None and plan.mode is not Normalize.GHOST:
            return  # counted over all ranks once synchronized
        smallest = x
        if plan.mode is Normalize.GHOST and x.shape[0] > self._bnkit_policy.ghost_size:
            smallest = torch.split(x, self._bnkit_policy.ghost_size)[-1]
        if BF.values_per_channel(smallest) <= 1 and (
            plan.mode is not Normalize.PRIOR or self._bnkit_policy.uses_batch_stats(self.training)
        ):
            what = {
                Normalize.RUNNING: "an update of the running statistics",
                Normalize.GHOST: f"ghost batches of {self._bnkit_policy.ghost_size}",
            }.get(plan.mode, "batch statistics")
            raise InputError(
                f"layer {self._bnkit_label()!r} needs more than 1 value per channel for {what} "
                f"(got input shape {tuple(x.shape)}); use a larger batch, or a policy that "
                "normalizes with running statistics and does not update them (e.g. 'frozen')"
            )

    def extra_repr(self) -> str:
        base: str = super().extra_repr()  # type: ignore[no-untyped-call]
        return f"{base}, policy={self._bnkit_policy!r}"

    def __reduce_ex__(self, protocol: Any) -> Any:
        # The managed class is made on the fly; pickle it as "managed version of <original>".
        return (_rebuild, (_ORIGINALS.get(type(self), type(self)),), self.__dict__)


class PolicyForwardSync(PolicyForward, nn.SyncBatchNorm):
    """The forward of a managed ``nn.SyncBatchNorm``: it synchronizes over its process group
    whenever one is initialized, on CPU (gloo) as well as on accelerators."""

    def _bnkit_group(self) -> Any:
        marker = self._bnkit_sync
        if marker is None:
            marker = _sync.GroupRef(self.process_group) if self.process_group else _sync.WORLD
        return _sync.resolve_group(marker)


_CLASSES: dict[type[_BatchNorm], type[_BatchNorm]] = {}
_ORIGINALS: dict[type[nn.Module], type[nn.Module]] = {}


def managed_class(cls: type[_BatchNorm]) -> type[_BatchNorm]:
    """The managed counterpart of a BatchNorm class (made once, then cached)."""
    if cls in _ORIGINALS:
        return cls
    if cls not in _CLASSES:
        mixin = PolicyForwardSync if issubclass(cls, nn.SyncBatchNorm) else PolicyForward
        namespace = {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
            "_bnkit_dims": _NATIVE_DIMS.get(cls._check_input_dim),
        }
        bases = (mixin,) if issubclass(mixin, cls) else (cls, mixin)
        managed = type(cls.__name__, bases, namespace)
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
