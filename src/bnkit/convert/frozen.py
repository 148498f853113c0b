"""Frozen exports: BatchNorm as a fixed affine map, in torchvision's ``FrozenBatchNorm2d`` format.

A frozen layer holds ``weight``, ``bias``, ``running_mean`` and ``running_var`` as *buffers*
(torchvision's keys; no parameters, so nothing trains) and computes exactly what the
BatchNorm layer it came from computes in ``eval()``: it calls the same kernel
(``F.batch_norm`` with the running statistics), so the outputs are bit-for-bit equal.

:func:`to_frozen` keeps the layer it replaced (outside ``state_dict``, not moved by ``.to()``);
:func:`from_frozen` puts that very module back (class, policy, momentum, ``eps``,
``num_batches_tracked``, ``requires_grad``, the same ``Parameter`` objects, hooks) with the
frozen layer's current values copied into it, so changes made to the frozen model (a loaded
checkpoint, :func:`bnkit.recalibrate` with ``where=``) carry over.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit.errors import InputError, LayerError
from bnkit.layers.adapters import Verdict, route
from bnkit.layers.managed import original_class
from bnkit.layers.select import Where, lazy_reason, register_bn_type, select
from bnkit.layers.surgery import replace_modules
from bnkit.policy import Policy, preset

__all__ = [
    "FrozenBatchNorm",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "from_frozen",
    "to_frozen",
]

M = TypeVar("M", bound=nn.Module)
_KEPT = "_bnkit_unfrozen"


class FrozenBatchNorm(nn.Module):
    """A BatchNorm layer fixed to its ``eval()`` behaviour: ``(x - mean) / sqrt(var + eps)·w + b``.

    This base class takes input of any rank from 2 on (as ``nn.SyncBatchNorm``); the 1d/2d/3d
    subclasses check the rank as the ``nn.BatchNorm`` classes do. Loading a ``BatchNorm``
    state dict works with ``strict=True``: its ``num_batches_tracked`` is ignored.
    """

    _bnkit_frozen_policy: ClassVar[Policy] = preset("frozen")
    _dims: ClassVar[tuple[int, int]] = (2, 64)
    _bn_class: ClassVar[type[_BatchNorm] | None] = None
    adapted_from: type[nn.Module] | None = None
    """The class of the layer it replaced, when that class computes BatchNorm in its own forward
    with a declared adapter (timm's ``BatchNormAct2d``): its steps around the normalization (an
    activation, say) are kept, with the layer's other submodules."""

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = float(eps)
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.register_buffer("weight", torch.ones(num_features, **kw))
        self.register_buffer("bias", torch.zeros(num_features, **kw))
        self.register_buffer("running_mean", torch.zeros(num_features, **kw))
        self.register_buffer("running_var", torch.ones(num_features, **kw))

    def forward(self, input: Tensor) -> Tensor:
        """Normalize with the stored statistics and affine, as BatchNorm does in ``eval()``
        (the same kernel), with the steps a declared layer adds around the normalization."""
        low, high = self._dims
        if not low <= input.dim() <= high or input.shape[1] != self.num_features:
            raise InputError(
                f"layer {vars(self).get('_bnkit_name') or type(self).__name__!r} expected "
                f"{_rank(low, high)} input with {self.num_features} channels in dim 1 (got "
                f"shape {tuple(input.shape)})"
            )
        adapter = None if self.adapted_from is None else route(self.adapted_from).adapter
        if adapter is None:
            return self._normalize(input)
        return adapter.around(self, input, self._normalize)

    def _normalize(self, input: Tensor) -> Tensor:
        return F.batch_norm(
            input, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        """``num_features`` and ``eps``, as ``repr()`` shows them."""
        return f"{self.num_features}, eps={self.eps}"


def _rank(low: int, high: int) -> str:
    return f"{low}D" if low == high else f"{low}D or {high}D" if high - low == 1 else f">= {low}D"


class FrozenBatchNorm1d(FrozenBatchNorm):
    """Frozen ``BatchNorm1d``: (N, C) or (N, C, L) input."""

    _dims = (2, 3)
    _bn_class = nn.BatchNorm1d


class FrozenBatchNorm2d(FrozenBatchNorm):
    """Frozen ``BatchNorm2d``: (N, C, H, W) input (torchvision's keys and numbers)."""

    _dims = (4, 4)
    _bn_class = nn.BatchNorm2d


class FrozenBatchNorm3d(FrozenBatchNorm):
    """Frozen ``BatchNorm3d``: (N, C, D, H, W) input."""

    _dims = (5, 5)
    _bn_class = nn.BatchNorm3d


for _cls in (FrozenBatchNorm, FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d):
    register_bn_type(_cls)


def _frozen_class(layer: _BatchNorm) -> type[FrozenBatchNorm]:
    cls = vars(layer).get("_bnkitsync_source") or original_class(layer)
    for frozen in (FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d):
        assert frozen._bn_class is not None
        if issubclass(cls, frozen._bn_class):
            return frozen
    return FrozenBatchNorm


def _check_freezable(name: str, layer: nn.Module) -> str | None:
    """Why ``layer`` cannot be frozen (None when it can)."""
    if not isinstance(layer, _BatchNorm):
        return f"is a {type(layer).__name__}, not a BatchNorm layer bnkit can export"
    lazy = lazy_reason(layer)
    if lazy is not None:
        return lazy
    if layer.running_mean is None or layer.running_var is None:
        return "has no running statistics (built with track_running_stats=False)"
    cls = original_class(layer)
    if not route(cls).plain:
        return (
            f"is a {cls.__name__}, whose own forward would be dropped by a frozen export; "
            "leave it out with where= (or declare it with bnkit.register_layer)"
        )
    return None


def to_frozen(model: M, where: Where = None) -> M:
    """Replace the selected BatchNorm layers by frozen exports (in place; returns the model).

    ``where=None`` converts every layer that can be (layers already frozen, and layers
    without running statistics, are skipped); a layer selected explicitly that cannot be
    converted is an error. A layer whose class defines its own ``forward`` (an activation
    added, say) is always an error: its export would drop what that forward adds.

    Raises:
        SelectionError: ``where`` matches no BatchNorm layer.
        LayerError: a selected layer cannot be exported (nothing is changed then).
    """
    chosen: set[int] = set()
    for name, layer in select(model, where):
        if isinstance(layer, FrozenBatchNorm):
            continue
        reason = _check_freezable(name, layer)
        if reason is None:
            chosen.add(id(layer))
        elif where is not None or "own forward" in reason:
            raise LayerError(f"layer {name!r} {reason}")
    return cast(M, replace_modules(model, lambda _, m: id(m) in chosen, _freeze))


def _freeze(name: str, layer: nn.Module) -> nn.Module:
    assert isinstance(layer, _BatchNorm)
    assert layer.running_mean is not None
    mean, var = layer.running_mean, layer.running_var
    assert var is not None
    frozen = _frozen_class(layer)(
        layer.num_features, layer.eps, device=mean.device, dtype=mean.dtype
    )
    with torch.no_grad():
        for key, value in (("weight", layer.weight), ("bias", layer.bias)):
            if value is not None:
                setattr(frozen, key, value.detach().clone())
        frozen.running_mean = mean.detach().clone()
        frozen.running_var = var.detach().clone()
    source = original_class(layer)
    if route(source).verdict is Verdict.ADAPTED:
        frozen.adapted_from = source
        for child_name, child in layer.named_children():
            frozen.add_module(child_name, child)
    vars(frozen)[_KEPT] = layer
    vars(frozen)["_bnkit_name"] = name
    return frozen


def from_frozen(model: M, where: Where = None) -> M:
    """Turn frozen exports back into BatchNorm layers (in place; returns the model).

    A layer made by :func:`to_frozen` becomes the very module it replaced, holding the frozen
    layer's current values. A frozen layer built directly (or loaded from a state dict into a
    fresh model) becomes a plain ``nn.BatchNorm1d/2d/3d`` with PyTorch's defaults
    (``momentum=0.1``, ``num_batches_tracked=0``, trainable gamma/beta).

    Raises:
        LayerError: a frozen layer of the base class with nothing to restore (its 1d/2d/3d
            class is unknown), or a layer made from ``affine=False`` whose weight/bias no
            longer are 1/0.
    """
    chosen = {id(m) for _, m in select(model, where) if isinstance(m, FrozenBatchNorm)}
    for name, layer in select(model, where):
        if id(layer) in chosen:
            assert isinstance(layer, FrozenBatchNorm)
            reason = _check_unfreezable(layer)
            if reason is not None:
                raise LayerError(f"layer {name!r} {reason}")
    return cast(M, replace_modules(model, lambda _, m: id(m) in chosen, _unfreeze))


def _check_unfreezable(frozen: FrozenBatchNorm) -> str | None:
    """Why ``frozen`` cannot become a BatchNorm layer again (None when it can)."""
    layer = vars(frozen).get(_KEPT)
    if not isinstance(layer, _BatchNorm):
        if type(frozen)._bn_class is None:
            return (
                "is a FrozenBatchNorm that bnkit did not make, so its BatchNorm class "
                "(1d/2d/3d) is unknown; replace it yourself"
            )
        return None
    for key, neutral in (("weight", 1.0), ("bias", 0.0)):
        value = getattr(frozen, key)
        if getattr(layer, key) is None and not bool((value == neutral).all()):
            return (
                f"came from a BatchNorm without gamma/beta (affine=False), but its frozen {key} "
                "was changed since; the original layer cannot hold it"
            )
    return None


def _unfreeze(name: str, frozen: nn.Module) -> nn.Module:
    assert isinstance(frozen, FrozenBatchNorm)
    mean = frozen.running_mean
    layer = vars(frozen).get(_KEPT)
    if not isinstance(layer, _BatchNorm):
        cls = type(frozen)._bn_class
        assert cls is not None  # checked by from_frozen
        layer = cls(frozen.num_features, frozen.eps, device=mean.device, dtype=mean.dtype)
    layer.to(device=mean.device, dtype=mean.dtype)
    with torch.no_grad():
        for key in ("weight", "bias"):
            target = getattr(layer, key)
            if target is not None:
                target.copy_(getattr(frozen, key))
        assert layer.running_mean is not None
        assert layer.running_var is not None
        layer.running_mean.copy_(frozen.running_mean)
        layer.running_var.copy_(frozen.running_var)
    return layer
