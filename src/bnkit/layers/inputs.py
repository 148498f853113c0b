"""Checks of a managed layer's input, before anything is computed or written."""

from __future__ import annotations

import sys

import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit import functional as BF
from bnkit.errors import InputError
from bnkit.layers.state import ManagedState, Plan
from bnkit.policy import Normalize

__all__ = ["NATIVE_DIMS", "check_input", "dims_of"]

_ANY = sys.maxsize
# Input ranks accepted by PyTorch's own classes, keyed by their _check_input_dim (SyncBatchNorm
# takes any rank from 2 up).
NATIVE_DIMS: dict[object, tuple[int, int]] = {
    nn.BatchNorm1d._check_input_dim: (2, 3),
    nn.BatchNorm2d._check_input_dim: (4, 4),
    nn.BatchNorm3d._check_input_dim: (5, 5),
    nn.SyncBatchNorm._check_input_dim: (2, _ANY),
}
_CLASS_FOR_DIM = {2: "BatchNorm1d", 3: "BatchNorm1d", 4: "BatchNorm2d", 5: "BatchNorm3d"}
_SHAPE_FOR_DIM = {2: "(N, C)", 3: "(N, C, L)", 4: "(N, C, H, W)", 5: "(N, C, D, H, W)"}


def dims_of(cls: type[_BatchNorm]) -> tuple[int, int] | None:
    """The input ranks a BatchNorm class accepts (None: its own ``_check_input_dim`` decides)."""
    return NATIVE_DIMS.get(cls._check_input_dim)


def check_input(
    layer: _BatchNorm,
    state: ManagedState,
    plan: Plan,
    x: Tensor,
    dims: tuple[int, int] | None,
    synchronized: bool,
) -> None:
    """Raise :class:`~bnkit.InputError` (naming the layer) for an input the plan cannot take."""
    label = state.label(layer)
    if dims is None:
        layer._check_input_dim(x)  # type: ignore[no-untyped-call]
    elif not dims[0] <= x.dim() <= dims[1]:
        lo, hi = dims
        if hi == _ANY:
            want = f"at least {lo}D"
        elif lo == hi:
            want = f"{lo}D"
        else:
            want = f"{lo}D to {hi}D" if hi > lo + 1 else f"{lo}D or {hi}D"
        hint = ""
        if x.dim() in _CLASS_FOR_DIM:
            hint = f"; use {_CLASS_FOR_DIM[x.dim()]} for {_SHAPE_FOR_DIM[x.dim()]} input"
        raise InputError(f"layer {label!r} expected {want} input (got {x.dim()}D input){hint}")
    if x.shape[1] != layer.num_features:
        raise InputError(
            f"layer {label!r} expected {layer.num_features} channels in dim 1 "
            f"(got {x.shape[1]}, input shape {tuple(x.shape)}); check the out_channels or "
            "out_features of the layer before it"
        )
    if not x.is_floating_point():
        raise InputError(
            f"layer {label!r} expected a floating-point input (got {x.dtype}); convert it with "
            "x.float()"
        )
    if (plan.mode is Normalize.RUNNING and not plan.update) or x.numel() == 0:
        return
    if synchronized and plan.mode is not Normalize.GHOST:
        return  # counted over all ranks
    mode = plan.mode
    if mode is Normalize.PRIOR and not state.policy.uses_batch_stats(layer.training):
        mode = Normalize.RUNNING  # N = inf: running statistics (the batch only for an update)
        if not plan.update:
            return
    per_sample = BF.values_per_channel(x) // x.shape[0]
    if plan.mode is Normalize.GHOST:
        sizes = BF.ghost_sizes(x.shape[0], state.policy.ghost_size)
        if len(sizes) > 1 and min(sizes) * per_sample <= 1:
            raise InputError(
                f"layer {label!r} needs more than 1 value per channel in every ghost batch: "
                f"ghost batches of at most {state.policy.ghost_size} samples split this batch "
                f"of {x.shape[0]} into groups of {_sizes(sizes)}, and a group of 1 sample has "
                f"1 value per channel (input shape {tuple(x.shape)}); use "
                f"{_fix(x.shape[0], state.policy.ghost_size)}"
            )
    if BF.values_per_channel(x) <= 1:
        what = {Normalize.RUNNING: "an update of the running statistics"}.get(
            mode, "batch statistics"
        )
        raise InputError(
            f"layer {label!r} needs more than 1 value per channel for {what} "
            f"(got input shape {tuple(x.shape)}); use a larger batch, or a policy that "
            "normalizes with running statistics and does not update them (e.g. 'frozen')"
        )


def _sizes(sizes: list[int]) -> str:
    return ", ".join(map(str, sizes[:-1])) + f" and {sizes[-1]}"


def _fix(samples: int, ghost_size: int) -> str:
    """A ghost size near the current one that leaves no 1-sample group for this batch."""
    # ghost_size=samples always works (one group of more than 1 sample)
    size = next(
        s for s in range(ghost_size + 1, samples + 1) if min(BF.ghost_sizes(samples, s)) > 1
    )
    return f"ghost_size={size} for batches of {samples}, or an even batch size"
