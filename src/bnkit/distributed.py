"""Batch statistics synchronized across the processes of a ``torch.distributed`` group.

``nn.SyncBatchNorm`` needs an accelerator; bnkit's synchronization also runs on CPU (gloo). For
each channel, every rank contributes the sum of its values and their count, so ranks with
different batch sizes weigh in by their number of values::

    mean = Σ_ranks Σ x / Σ_ranks n,      var = Σ_ranks Σ (x - mean)² / Σ_ranks n

Both sums go through an all-reduce whose backward all-reduces the gradients, so every rank's
gradient is what a single process would compute on the concatenated batch. All ranks then hold
the same statistics and update their running statistics identically. On CUDA, a synchronized
layer whose policy normalizes with plain batch statistics uses PyTorch's own SyncBatchNorm
kernels instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import torch.nn as nn

from bnkit.apply import policy_of
from bnkit.errors import PolicyError
from bnkit.layers.manage import manage_all
from bnkit.layers.select import Where, select, targets
from bnkit.layers.state import ATTR, state_of
from bnkit.layers.sync import SyncSpec

__all__ = ["desynchronize", "is_synchronized", "synchronize"]

M = TypeVar("M", bound=nn.Module)


def synchronize(
    model: M, group: Any = None, where: Where = None, *, timeout: float | None = None
) -> M:
    """Synchronize batch statistics of the selected layers across the ranks of ``group``.

    Every selected layer whose policy normalizes with batch statistics (plain batch statistics,
    batch renormalization, prior mixing) computes them over the union of all ranks' batches,
    sample-count weighted, with gradients through the exchange; a policy that updates the
    running statistics from the batch (``adapt``) updates them from all ranks' batches too.
    Ghost batches stay per rank. Plain layers are first given the policy their flags amount
    to. Without an initialized process group (or with one rank) layers behave as before. Every
    rank must run the same forwards and backwards, as with DDP. Every layer is checked before
    any changes.

    A rank that fails, runs out of data or skips a forward leaves the others waiting at their
    next exchange: they raise :class:`~bnkit.errors.DistributedError` (naming the layer) after
    ``timeout`` seconds, or the process group's own timeout.

    Args:
        model: the model (DDP and compiled wrappers are seen through).
        group: a process group; the default group if None.
        where: which layers; all if None.
        timeout: seconds one rank waits for the others at one exchange (None: the group's).

    Examples:
        >>> import torch.nn as nn, bnkit
        >>> model = bnkit.synchronize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8)))
        >>> bnkit.distributed.is_synchronized(model[1])
        True
    """
    layers = targets(model, where)
    plain = [(name, layer, policy_of(layer)) for name, layer in layers if state_of(layer) is None]
    manage_all(plain)
    if timeout is not None and not (isinstance(timeout, (int, float)) and timeout > 0):
        raise PolicyError(f"timeout must be a positive number of seconds (got {timeout!r})")
    marker = SyncSpec(group, None if timeout is None else float(timeout))
    for _, layer in layers:
        state = state_of(layer)
        assert state is not None
        vars(layer)[ATTR] = dataclasses.replace(state, sync=marker)
    return model


def desynchronize(model: M, where: Where = None) -> M:
    """Undo :func:`synchronize` on the selected layers (their policies stay)."""
    for _, layer in select(model, where):
        state = state_of(layer)
        if state is not None and state.sync is not None:
            vars(layer)[ATTR] = dataclasses.replace(state, sync=None)
    return model


def is_synchronized(layer: nn.Module) -> bool:
    """Whether :func:`synchronize` was applied to this layer."""
    state = state_of(layer)
    return state is not None and state.sync is not None and not state.sync.local
