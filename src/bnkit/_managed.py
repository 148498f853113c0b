"""Managed BatchNorm layers: the policy lives on the layer and its forward follows it.

A layer keeps its identity: bnkit swaps its class for a subclass built on the fly that puts
:class:`PolicyForward` just above PyTorch's own ``forward`` in the method resolution order::

    BatchNorm2d (managed) -> [user subclass ->] BatchNorm2d -> PolicyForward -> _BatchNorm

so a user subclass that calls ``super().forward(x)`` (to add an activation, say) keeps its
behaviour, while parameters, buffers, ``state_dict`` keys and hooks stay exactly as they were.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import torch
import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit import functional as BF
from bnkit._surgery import LayerState, capture
from bnkit.errors import InputError, LayerError, NonFiniteBatchWarning
from bnkit.policy import Affine, Policy, Update

__all__ = ["Plan", "PolicyForward", "is_managed", "manage", "managed_class", "plan_for"]


class Plan(NamedTuple):
    """What one forward does in one phase: resolved once, when the policy is applied."""

    batch: bool
    """Normalize with batch statistics (else running statistics)."""
    update: bool
    """Update the running statistics."""
    cumulative: bool
    """Update factor 1/k (else ``momentum``)."""
    momentum: float
    frozen_affine: bool


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
    install_probe(layer)


def plan_for(policy: Policy, training: bool) -> Plan:
    """Resolve a policy and a phase into a :class:`Plan`."""
    return Plan(
        batch=policy.uses_batch_stats(training),
        update=policy.updates(training),
        cumulative=policy.update is Update.CUMULATIVE,
        momentum=policy.momentum,
        frozen_affine=policy.affine is Affine.FROZEN,
    )


# Input dims accepted by PyTorch's own classes, keyed by their _check_input_dim.
_NATIVE_DIMS: dict[Any, tuple[int, int]] = {
    nn.BatchNorm1d._check_input_dim: (2, 3),
    nn.BatchNorm2d._check_input_dim: (4, 4),
    nn.BatchNorm3d._check_input_dim: (5, 5),
    nn.SyncBatchNorm._check_input_dim: (2, 64),
}
_CLASS_FOR_DIM = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}
_SHAPE_FOR_DIM = {2: "(N, C)", 3: "(N, C, L)", 4: "(N, C, H, W)", 5: "(N, C, D, H, W)"}


class PolicyForward(_BatchNorm):
    """The forward of every managed layer (never instantiated directly)."""

    _bnkit_policy: Policy
    _bnkit_name: str
    _bnkit_plan_train: Plan
    _bnkit_plan_eval: Plan
    _bnkit_dims: tuple[int, int] | None = None
    _bnkitprobe_on: bool = False

    def forward(self, input: Tensor) -> Tensor:
        plan = self._bnkit_plan_train if self.training else self._bnkit_plan_eval
        self._bnkit_check_input(input, plan)
        if self._bnkitprobe_on:
            self._bnkitprobe_hit = True
        weight: Tensor | None = self.weight
        bias: Tensor | None = self.bias
        if plan.frozen_affine:
            weight = None if weight is None else weight.detach()
            bias = None if bias is None else bias.detach()
        if plan.batch:
            if plan.update:
                return self._bnkit_batch_with_update(input, weight, bias, plan)
            return self._bnkit_batch_normalize(input, weight, bias, None, None, 0.0)
        running_mean, running_var = self._bnkit_running()
        if plan.update:
            return self._bnkit_running_with_update(input, weight, bias, plan)
        return BF.normalize(input, running_mean, running_var, weight, bias, self.eps)

    # ----------------------------------------------------------------- checks
    def _bnkit_label(self) -> str:
        return self._bnkit_name or type(self).__name__

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
        if (plan.batch or plan.update) and BF.values_per_channel(x) <= 1:
            need = "batch statistics" if plan.batch else "an update of the running statistics"
            raise InputError(
                f"layer {self._bnkit_label()!r} needs more than 1 value per channel for {need} "
                f"(got input shape {tuple(x.shape)}); use a larger batch, or a policy that "
                "normalizes with running statistics and does not update them (e.g. 'frozen')"
            )

    def _bnkit_running(self) -> tuple[Tensor, Tensor]:
        mean, var = self.running_mean, self.running_var
        if mean is None or var is None:
            raise LayerError(
                f"layer {self._bnkit_label()!r} has no running statistics "
                "(built with track_running_stats=False) but its policy needs them"
            )
        return mean, var

    # ----------------------------------------------------------------- paths
    def _bnkit_batch_normalize(
        self,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        factor: float,
    ) -> Tensor:
        """Normalize with batch statistics (the one place a synchronized layer overrides)."""
        return BF.normalize_with_batch(x, weight, bias, self.eps, running_mean, running_var, factor)

    def _bnkit_batch_with_update(
        self, x: Tensor, weight: Tensor | None, bias: Tensor | None, plan: Plan
    ) -> Tensor:
        mean, var = self._bnkit_running()
        counted = self._bnkit_count()
        if _sync_free(mean):
            # The kernel updates copies (autograd saves what it is given), selected on the device.
            new_mean, new_var = mean.clone(), var.clone()
            if plan.cumulative and torch.compiler.is_compiling():
                out = self._bnkit_batch_normalize(x, weight, bias, None, None, 0.0)
                self._bnkit_cumulative_tensor_update(x, new_mean, new_var)
            else:
                factor = self._bnkit_factor(plan)
                out = self._bnkit_batch_normalize(x, weight, bias, new_mean, new_var, factor)
            self._bnkit_select(new_mean, new_var, counted)
            return out
        old_mean, old_var = mean.clone(), var.clone()
        out = self._bnkit_batch_normalize(x, weight, bias, mean, var, self._bnkit_factor(plan))
        self._bnkit_check(old_mean, old_var, counted)
        return out

    def _bnkit_running_with_update(
        self, x: Tensor, weight: Tensor | None, bias: Tensor | None, plan: Plan
    ) -> Tensor:
        mean, var = self._bnkit_running()
        used_mean, used_var = BF.snapshot(mean), BF.snapshot(var)
        counted = self._bnkit_count()
        if _sync_free(mean):
            new_mean, new_var = mean.clone(), var.clone()
            if plan.cumulative and torch.compiler.is_compiling():
                self._bnkit_cumulative_tensor_update(x, new_mean, new_var)
            else:
                BF.update_running_stats(x, new_mean, new_var, self._bnkit_factor(plan))
            self._bnkit_select(new_mean, new_var, counted)
        else:
            BF.update_running_stats(x, mean, var, self._bnkit_factor(plan))
            self._bnkit_check(used_mean, used_var, counted)
        return BF.normalize(x, used_mean, used_var, weight, bias, self.eps)

    # ----------------------------------------------------------------- updates
    def _bnkit_count(self) -> bool:
        nbt = self.num_batches_tracked
        if nbt is None:
            return False
        nbt.add_(1)
        return True

    def _bnkit_factor(self, plan: Plan) -> float:
        if not plan.cumulative:
            return plan.momentum
        nbt = self.num_batches_tracked
        assert nbt is not None  # checked when the policy was applied
        return 1.0 / float(nbt)

    def _bnkit_cumulative_tensor_update(self, x: Tensor, mean: Tensor, var: Tensor) -> None:
        # torch.compile cannot read the counter on the host: keep the factor on the device.
        nbt = self.num_batches_tracked
        assert nbt is not None
        BF.update_running_stats(x, mean, var, 1.0 / nbt.to(mean.dtype))

    def _bnkit_select(self, new_mean: Tensor, new_var: Tensor, counted: bool) -> None:
        """Write the updated statistics unless they turned finite ones into NaN/Inf (no sync)."""
        mean, var = self._bnkit_running()
        keep = torch.isfinite(new_mean + new_var).all() | ~torch.isfinite(mean + var).all()
        mean.copy_(torch.where(keep, new_mean, mean))
        var.copy_(torch.where(keep, new_var, var))
        nbt = self.num_batches_tracked
        if counted and nbt is not None:
            nbt.sub_((~keep).to(nbt.dtype))

    def _bnkit_check(self, old_mean: Tensor, old_var: Tensor, counted: bool) -> None:
        """Undo, with a warning, an update that turned finite statistics into NaN/Inf."""
        mean, var = self._bnkit_running()
        # One reduction read on the host: NaN/Inf anywhere makes the sum non-finite.
        if math.isfinite(mean.sum().add_(var.sum()).item()):
            return
        if bool(torch.isfinite(mean).all() & torch.isfinite(var).all()):
            return  # only the sum overflowed
        if not bool(torch.isfinite(old_mean).all() & torch.isfinite(old_var).all()):
            return  # already non-finite before this batch: nothing to protect
        # .data: autograd may hold the buffers for the backward of this forward.
        mean.data.copy_(old_mean)
        var.data.copy_(old_var)
        nbt = self.num_batches_tracked
        if counted and nbt is not None:
            nbt.sub_(1)
        warnings.warn(
            NonFiniteBatchWarning(
                f"layer {self._bnkit_label()!r}: the batch has NaN/Inf statistics; its update "
                "of the running statistics was skipped"
            ),
            stacklevel=4,
        )

    # ----------------------------------------------------------------- plumbing
    def extra_repr(self) -> str:
        base: str = super().extra_repr()  # type: ignore[no-untyped-call]
        return f"{base}, policy={self._bnkit_policy!r}"

    def __reduce_ex__(self, protocol: Any) -> Any:
        # The managed class is made on the fly; pickle it as "managed version of <original>".
        return (_rebuild, (_original_class(type(self)),), self.__dict__)


def _sync_free(t: Tensor) -> bool:
    """Whether guards must avoid host synchronization (compiled graphs, accelerators)."""
    return torch.compiler.is_compiling() or t.device.type != "cpu"


class PolicyForwardSync(PolicyForward, nn.SyncBatchNorm):
    """The forward of a managed ``nn.SyncBatchNorm``: batch statistics sync across ranks."""

    def _bnkit_batch_normalize(
        self,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        factor: float,
    ) -> Tensor:
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return super()._bnkit_batch_normalize(
                x, weight, bias, running_mean, running_var, factor
            )
        group = self.process_group or dist.group.WORLD
        world_size = dist.get_world_size(group)
        if world_size <= 1:
            return super()._bnkit_batch_normalize(
                x, weight, bias, running_mean, running_var, factor
            )
        if x.device.type == "cpu":
            raise InputError(
                f"layer {self._bnkit_label()!r} is an nn.SyncBatchNorm, whose synchronization "
                "needs an accelerator (got a CPU tensor); use bnkit.synchronize(model) for "
                "synchronized batch statistics on CPU"
            )
        from torch.nn.modules._functions import SyncBatchNorm as _SyncFn

        out: Tensor = _SyncFn.apply(  # type: ignore[no-untyped-call]
            x, weight, bias, running_mean, running_var, self.eps, factor, group, world_size
        )
        return out


_CLASSES: dict[type[_BatchNorm], type[_BatchNorm]] = {}
_ORIGINALS: dict[type[_BatchNorm], type[_BatchNorm]] = {}


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


def _original_class(cls: type[_BatchNorm]) -> type[_BatchNorm]:
    return _ORIGINALS.get(cls, cls)


def is_managed(layer: nn.Module) -> bool:
    """Whether bnkit manages this layer's behaviour."""
    return type(layer) in _ORIGINALS


def original_class(layer: nn.Module) -> type[nn.Module]:
    """The class the layer had before bnkit managed it."""
    cls = type(layer)
    return _ORIGINALS.get(cls, cls)  # type: ignore[arg-type]


def foreign_forward(cls: type[_BatchNorm]) -> bool:
    """Whether ``cls`` defines its own forward (which must call ``super().forward``)."""
    for klass in cls.__mro__:
        if "forward" in vars(klass):
            return klass not in (_BatchNorm, nn.SyncBatchNorm)
    return False


_VERIFIED: set[type[nn.Module]] = set()


def install_probe(layer: nn.Module) -> None:
    """Check, on the layer's next forward, that its class's own forward reaches bnkit's.

    A subclass that overrides ``forward`` keeps its behaviour only if it calls
    ``super().forward(x)``; one that calls ``F.batch_norm`` itself would silently ignore the
    policy. The check runs once per class and removes itself.
    """
    cls = original_class(layer)
    if cls in _VERIFIED or not foreign_forward(cls):  # type: ignore[arg-type]
        return
    remove_probe(layer)
    setattr(layer, "_bnkitprobe_on", True)  # noqa: B010 (nn.Module's typed __setattr__)
    layer.register_forward_pre_hook(_probe_before)
    layer.register_forward_hook(_probe_after)


def remove_probe(layer: nn.Module) -> None:
    """Remove the check :func:`install_probe` added, if any."""
    for hooks, fn in (
        (layer._forward_pre_hooks, _probe_before),
        (layer._forward_hooks, _probe_after),
    ):
        for key in [k for k, f in hooks.items() if f is fn]:
            del hooks[key]
    for attr in ("_bnkitprobe_on", "_bnkitprobe_hit", "_bnkitprobe_saved"):
        layer.__dict__.pop(attr, None)


def _probe_before(module: nn.Module, args: Any) -> None:
    vars(module)["_bnkitprobe_hit"] = False
    vars(module)["_bnkitprobe_saved"] = [b.clone() for b in module.buffers(recurse=False)]


def _probe_after(module: nn.Module, args: Any, output: Any) -> None:
    hit = module.__dict__.get("_bnkitprobe_hit", False)
    saved = module.__dict__.get("_bnkitprobe_saved", [])
    remove_probe(module)
    if hit:
        _VERIFIED.add(original_class(module))
        return
    for buf, old in zip(module.buffers(recurse=False), saved, strict=True):
        buf.copy_(old)
    cls = original_class(module).__name__
    raise LayerError(
        f"layer {getattr(module, '_bnkit_name', '') or cls!r}: {cls}.forward does not call "
        "BatchNorm's forward (super().forward(x)), so bnkit cannot apply its policy "
        f"{getattr(module, '_bnkit_policy', None)!r}; make its forward call super().forward(x) "
        "and post-process the result, or call bnkit.unfreeze on it"
    )


def _rebuild(cls: type[_BatchNorm]) -> _BatchNorm:
    managed = managed_class(cls)
    return managed.__new__(managed)
