"""Padded sequences: BatchNorm1d statistics over the valid positions only.

Batches of variable-length sequences are padded to one length; ``nn.BatchNorm1d`` on
``(N, C, L)`` then counts the padding in its batch statistics and running statistics. Inside
``with bnkit.mask(model, mask):`` (``mask`` of shape ``(N, L)``, True where a position is
valid) every selected layer computes its statistics over the valid positions only, under every
policy, and normalizes all positions with them (padded outputs stay finite).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import TypeVar

import torch
import torch.nn as nn
from torch import Tensor

from bnkit.apply import policy_of
from bnkit.errors import InputError
from bnkit.layers.manage import hold, manage_all
from bnkit.layers.select import Where, targets
from bnkit.layers.state import ATTR, state_of
from bnkit.layers.surgery import capture, restore

__all__ = ["mask"]

M = TypeVar("M", bound=nn.Module)


@contextlib.contextmanager
def mask(model: M, valid: Tensor, where: Where = None) -> Iterator[M]:
    """Normalize padded sequences with the statistics of their valid positions only.

    Args:
        model: the model; its selected BatchNorm layers must take ``(N, C, L)`` input.
        valid: ``(N, L)`` booleans, True where a position holds data (e.g.
            ``torch.arange(L) < lengths[:, None]``).
        where: which BatchNorm layers; all if None. Plain layers get the policy their flags
            amount to for the block.

    Raises:
        InputError: ``valid`` is not a 2D boolean tensor (checked here), or a layer's input
            does not match it (checked at its forward).

    Examples:
        >>> import torch, torch.nn as nn, bnkit
        >>> layer = nn.BatchNorm1d(2)
        >>> x = torch.randn(3, 2, 5)
        >>> lengths = torch.tensor([5, 3, 2])
        >>> x[1, :, 3:] = x[2, :, 2:] = 100.0  # padding
        >>> with bnkit.mask(layer, torch.arange(5) < lengths[:, None]):
        ...     y = layer.train()(x)
        >>> bool(layer.running_mean.abs().max() < 10)  # the padding never counted
        True
    """
    if not isinstance(valid, Tensor) or valid.dim() != 2 or valid.dtype != torch.bool:
        got = (
            f"{valid.dtype} of shape {tuple(valid.shape)}"
            if isinstance(valid, Tensor)
            else type(valid).__name__
        )
        raise InputError(f"mask needs an (N, L) bool tensor, True where valid (got {got})")
    layers = targets(model, where)
    with hold(layers, "mask"), contextlib.ExitStack() as undo:
        for layer, snap in [(layer, capture(layer)) for _, layer in layers]:
            undo.callback(restore, layer, snap)
        manage_all([(n, m, policy_of(m)) for n, m in layers if state_of(m) is None])
        for _, layer in layers:
            state = state_of(layer)
            assert state is not None
            vars(layer)[ATTR] = dataclasses.replace(state, mask=valid)
        yield model
