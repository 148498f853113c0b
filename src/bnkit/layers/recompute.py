"""Activation checkpointing: a recomputed forward neither updates the running statistics a
second time nor sees them changed.

``torch.utils.checkpoint`` (reentrant or not) runs a segment's forward again during the
backward. bnkit tells a recomputation by the autograd engine running it, skips its update,
and, where the output depends on the running statistics (``adapt``, ``prior``, ``renorm``),
normalizes with the values the original forward used, remembered when it updated them. The
memory holds the last few updates of each layer; a recomputation takes the latest one not yet
taken. In a forward/backward loop (with gradient accumulation or not) that is exactly its own
forward; when the layer was updated again before the backward (several forwards, then one
backward) it is right as long as the backward runs the segments in reverse order, as it does
for one loss over them, and bnkit warns that it relied on that.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["recomputing", "remember", "replay"]


class _Memory(NamedTuple):
    seq: int
    """Which update of the layer this was (1, 2, ...)."""
    mean: Tensor
    var: Tensor
    counter: Tensor | None
    """The running statistics and counter the original forward read, before its update."""


_HISTORY: weakref.WeakKeyDictionary[nn.Module, list[_Memory]] = weakref.WeakKeyDictionary()
_UPDATES: weakref.WeakKeyDictionary[nn.Module, int] = weakref.WeakKeyDictionary()
_KEPT = 8  # updates remembered per layer


def recomputing() -> bool:
    """Whether this forward is a recomputation inside a backward (activation checkpointing)."""
    return not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1


def remember(layer: nn.Module, old: tuple[Tensor, Tensor], count: Tensor | None) -> None:
    """Keep what a forward read before it updated the running statistics."""
    if torch.compiler.is_compiling():
        return
    seq = _UPDATES[layer] = _UPDATES.get(layer, 0) + 1
    memories = _HISTORY.setdefault(layer, [])
    memories.append(_Memory(seq, old[0], old[1], count))
    del memories[:-_KEPT]


@contextlib.contextmanager
def replay(layer: nn.Module, depends_on_running: bool) -> Iterator[None]:
    """Inside a recomputation: the layer's buffers as the original forward read them."""
    buffers = layer._buffers
    memories = _HISTORY.get(layer, [])
    memory = memories.pop() if memories else None
    if memory is None:
        yield
        return
    if depends_on_running and memory.seq != _UPDATES.get(layer):
        warnings.warn(
            f"{type(layer).__name__}: its running statistics were updated again between a "
            "forward and the recomputation of that forward (activation checkpointing), so "
            "bnkit replays the statistics of the latest forward not yet recomputed: exact when "
            "the backward recomputes in reverse order of the forwards, as for one loss over "
            "them; run each forward's backward before the next forward to be sure",
            RuntimeWarning,
            stacklevel=4,
        )
    saved = dict(buffers)
    buffers["running_mean"], buffers["running_var"] = memory.mean, memory.var
    if memory.counter is not None and buffers.get("num_batches_tracked") is not None:
        buffers["num_batches_tracked"] = memory.counter
    try:
        yield
    finally:
        buffers.update(saved)
