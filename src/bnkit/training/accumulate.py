r"""Gradient accumulation: running statistics that move once per optimizer step.

With k micro-batches per optimizer step, ``nn.BatchNorm`` takes k EMA steps of the running
statistics, one per micro-batch, each from a k-th of the data, so they weigh micro-batches
unlike one large batch would and move k times as fast. Inside :func:`accumulate`, every
forward's update is held back instead, pooled exactly with the others (count-weighted means,
pooled variance: :func:`bnkit.functional.pool_into`), and folded in as *one* update when
``optimizer.step()`` runs: after k micro-batches each layer's buffers equal one update with the
statistics of everything that layer saw, and ``num_batches_tracked`` grows by one.

A step that does not happen commits nothing: ``torch.amp.GradScaler`` skips
``optimizer.step()`` when the gradients overflowed, and the held-back statistics are dropped
at the next ``optimizer.zero_grad()`` (or :meth:`Accumulation.discard`). Updates still held
back when the block ends are dropped too: their step never came.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit.apply import policy_of
from bnkit.errors import LayerError
from bnkit.layers.manage import hold, manage_all
from bnkit.layers.pending import Pending
from bnkit.layers.select import Where, targets
from bnkit.layers.state import ATTR, state_of
from bnkit.layers.surgery import capture, restore
from bnkit.layers.update import Update
from bnkit.policy import Normalize

__all__ = ["Accumulation", "accumulate"]


class Accumulation:
    """The held-back updates of one :func:`accumulate` block."""

    def __init__(self, layers: list[tuple[str, nn.Module]]) -> None:
        self.layers = layers
        self.steps = 0
        """Optimizer steps that committed updates."""
        self.dropped = 0
        """Times held-back updates were dropped (a skipped step, or :meth:`discard`)."""

    @property
    def forwards(self) -> int:
        """Forwards held back since the last commit (the most of any layer)."""
        return max((int(_pending(layer).forwards) for _, layer in self.layers), default=0)

    def commit(self) -> None:
        """Fold every layer's held-back statistics in as one update each (what a step does)."""
        committed = False
        for _, layer in self.layers:
            result = _pending(layer).result()
            if result is None:
                continue
            state = state_of(layer)
            assert state is not None and isinstance(layer, _BatchNorm)
            plan = state.train if state.train.update else state.eval  # the factor's rule
            update = Update(layer, dataclasses.replace(state, pending=None), plan)
            update.fold_unbiased(*result)
            update.commit()
            _fresh(layer)
            committed = True
        self.steps += committed

    def discard(self) -> None:
        """Drop every held-back update (a step that did not happen)."""
        if self.forwards:
            self.dropped += 1
        for _, layer in self.layers:
            _fresh(layer)


def _pending(layer: nn.Module) -> Pending:
    state = state_of(layer)
    assert state is not None and state.pending is not None
    return state.pending


def _fresh(layer: nn.Module) -> None:
    """Give a managed layer an empty :class:`Pending` (its updates are held back from now)."""
    state = state_of(layer)
    assert state is not None
    mean = layer.running_mean
    assert isinstance(mean, torch.Tensor)
    within = state.policy.normalize is Normalize.GHOST
    pending = Pending(mean.numel(), mean.device, within=within)
    vars(layer)[ATTR] = dataclasses.replace(state, pending=pending)


@contextlib.contextmanager
def accumulate(
    model: nn.Module, optimizer: torch.optim.Optimizer, where: Where = None
) -> Iterator[Accumulation]:
    """Hold back running-statistic updates and commit them as one per ``optimizer.step()``.

    Works with every policy that updates statistics (ghost batches keep their own rule: the
    size-weighted means of their groups' means and unbiased variances), with
    :func:`bnkit.synchronize` (the pooled statistics are every rank's), and under
    ``torch.compile``. Plain layers are given the policy their flags amount to for the block.

    Args:
        model: the model.
        optimizer: the optimizer whose ``step()`` commits (``zero_grad()`` without a step in
            between drops, as after a step skipped by ``GradScaler``).
        where: which BatchNorm layers; all if None.

    Examples:
        >>> import torch, torch.nn as nn, bnkit
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8))
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> with bnkit.accumulate(model, opt) as acc:
        ...     for micro in torch.randn(4, 16, 4).unbind():  # 4 micro-batches, one step
        ...         model(micro).sum().backward()
        ...     opt.step()
        ...     opt.zero_grad()
        >>> int(model[1].num_batches_tracked), acc.steps
        (1, 1)
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise LayerError(
            f"accumulate needs the torch.optim.Optimizer whose step() commits (got "
            f"{type(optimizer).__name__})"
        )
    layers = targets(model, where)
    for name, layer in layers:
        if getattr(layer, "running_mean", None) is None:
            raise LayerError(f"layer {name!r} has no running statistics to hold updates of")
    acc = Accumulation(layers)
    with hold(layers, "accumulate"), contextlib.ExitStack() as undo:
        for layer, snap in [(layer, capture(layer)) for _, layer in layers]:
            undo.callback(restore, layer, snap)
        manage_all([(n, m, policy_of(m)) for n, m in layers if state_of(m) is None])
        for _, layer in layers:
            _fresh(layer)
        undo.callback(optimizer.register_step_post_hook(lambda *_: acc.commit()).remove)
        zero_grad = optimizer.zero_grad

        def dropping_zero_grad(*args: Any, **kwargs: Any) -> None:
            acc.discard()  # anything still held back had no step
            zero_grad(*args, **kwargs)

        vars(optimizer)["zero_grad"] = dropping_zero_grad
        undo.callback(vars(optimizer).pop, "zero_grad", None)
        yield acc
