"""``bnkit.watch``: what every BatchNorm layer did, step by step, while a block runs.

A *step* starts with each forward of the watched model (its root module) and lasts until the
next one, so a training step's forward, backward and ``optimizer.step()`` fall in one step. Per
step and layer a watch records how often the layer ran and with which statistics (from its
policy and phase at call time), how far its running statistics moved, how much
``num_batches_tracked`` grew, whether gamma/beta received a gradient, and how far gamma/beta
moved. Hooks are removed on exit, also when the block raises.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit.diagnostics import _watch_output as out
from bnkit.diagnostics._facts import as_module, behaviour, layer_facts
from bnkit.diagnostics._watch_measure import Change, Layout
from bnkit.errors import DiagnosticError
from bnkit.layers.select import Where, select
from bnkit.layers.state import state_of

__all__ = ["LayerStep", "Watch", "watch"]


@dataclasses.dataclass(frozen=True)
class LayerStep:
    """What one layer did in one recorded step (``every`` steps when ``every > 1``)."""

    step: int
    """Index of the last step covered (the first forward of the model is step 0)."""
    layer: str
    calls: int
    """Forwards of the layer."""
    used: str
    """Statistics that normalized: ``"batch"``, ``"running"``, both, or ``""`` (not called)."""
    mean_change: float | None
    """Largest ``|Δ running_mean|`` over channels (None without running statistics)."""
    var_change: float | None
    """Largest ``|Δ running_var|``."""
    rel_change: float | None
    """``‖Δ‖ / ‖before‖`` of running_mean and running_var together (L2)."""
    drift: float | None
    """Mean symmetric KL per channel between the running statistics at the start and now
    (the distance ``domain_shift`` uses, with the layer's eps)."""
    batches: int
    """Growth of ``num_batches_tracked``."""
    grad: bool
    """gamma/beta received a gradient."""
    affine_change: float
    """Largest ``|Δ|`` of gamma/beta (0 without them)."""

    @property
    def stats_moved(self) -> bool:
        """The running statistics or their counter changed."""
        return bool(self.mean_change or self.var_change or self.batches)


class Watch:
    """Records what the BatchNorm layers do; use as ``with bnkit.watch(model) as w:``."""

    def __init__(
        self, model: nn.Module, *, writer: Any = None, every: int = 1, where: Where = None
    ) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise DiagnosticError(f"every must be a positive integer (got {every!r})")
        self.model = as_module(model, "watch")
        self.layers = select(self.model, where)
        self.every = every
        self.records: list[LayerStep] = []
        """Every recorded :class:`LayerStep`, in order."""
        self.steps = 0
        """Forwards of the model seen so far."""
        self._writer_arg = writer
        self._writer: Any = None
        self._own_writer = False
        self._handles: list[Any] = []
        self._active = False
        self._entered = False
        self._reset_interval()

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> Watch:
        if self._entered:
            raise DiagnosticError("a watch records one with-block; start a new bnkit.watch()")
        self._entered = True
        self._writer, self._own_writer = out.writer(self._writer_arg)
        self._layout = Layout(self.layers)
        self._start = self._layout.snap()
        self._prev = self._start
        self._active = True
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._on_step))
            for name, layer in self.layers:
                self._handles.append(layer.register_forward_pre_hook(self._on_call(name)))
                for p in (getattr(layer, "weight", None), getattr(layer, "bias", None)):
                    if isinstance(p, nn.Parameter) and p.requires_grad:
                        self._handles.append(
                            p.register_post_accumulate_grad_hook(self._on_grad(name))  # type: ignore[no-untyped-call]
                        )
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        err: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self.steps or any(self._calls.values()):
                self._record(self.steps - 1)
        finally:
            self._close()

    def _close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._active = False
        if self._own_writer and self._writer is not None:
            self._writer.close()
        elif self._writer is not None and hasattr(self._writer, "flush"):
            self._writer.flush()

    # ------------------------------------------------------------------ hooks
    def _reset_interval(self) -> None:
        names = [n for n, _ in self.layers]
        self._calls = dict.fromkeys(names, 0)
        self._used: dict[str, set[str]] = {n: set() for n in names}
        self._grads = dict.fromkeys(names, False)

    def _on_step(self, module: nn.Module, args: Any) -> None:
        if self.steps and self.steps % self.every == 0:
            self._record(self.steps - 1)
        self.steps += 1

    def _on_call(self, name: str) -> Any:
        def hook(layer: nn.Module, args: Any) -> None:
            self._calls[name] += 1
            self._used[name].add("batch" if _uses_batch(layer) else "running")

        return hook

    def _on_grad(self, name: str) -> Any:
        def hook(param: Tensor) -> None:
            self._grads[name] = True

        return hook

    # ------------------------------------------------------------------ measuring
    def _steps(self, step: int, changes: dict[str, Change]) -> list[LayerStep]:
        return [
            LayerStep(
                step=step,
                layer=name,
                calls=self._calls[name],
                used=", ".join(sorted(self._used[name])),
                mean_change=c.mean,
                var_change=c.var,
                rel_change=c.rel,
                drift=c.drift,
                batches=c.batches,
                grad=self._grads[name],
                affine_change=c.affine,
            )
            for name, c in changes.items()
        ]

    def _record(self, step: int) -> None:
        snaps = self._layout.snap()
        changes = self._layout.measure(snaps, self._prev, self._start)
        new = self._steps(step, changes)
        self.records.extend(new)
        if self._writer is not None:
            out.write_scalars(self._writer, new)
        self._prev = snaps
        self._reset_interval()

    def _pending(self) -> list[LayerStep]:
        """What changed since the last record (inside the ``with`` block), not recorded."""
        if not self._active:
            return []
        now = self._layout.snap()
        return self._steps(self.steps, self._layout.measure(now, self._prev, self._start))

    # ------------------------------------------------------------------ results
    def __iter__(self) -> Iterator[LayerStep]:
        return iter(self.records)

    def changed(self) -> list[str]:
        """Layers whose running statistics or ``num_batches_tracked`` moved during the watch.

        A movement that was later undone counts; inside the ``with`` block, changes since the
        last recorded step count too.
        """
        moved = {r.layer for r in [*self.records, *self._pending()] if r.stats_moved}
        return [n for n, _ in self.layers if n in moved]

    def _problems(self, affine: bool) -> list[str]:
        lines = []
        records = [*self.records, *self._pending()]
        for name, _ in self.layers:
            mine = [r for r in records if r.layer == name]
            what = []
            mean = max((r.mean_change or 0.0 for r in mine), default=0.0)
            var = max((r.var_change or 0.0 for r in mine), default=0.0)
            batches = sum(r.batches for r in mine)
            if mean:
                what.append(f"running_mean moved (max |Δ| per record {mean:.3g})")
            if var:
                what.append(f"running_var moved (max |Δ| per record {var:.3g})")
            if batches:
                what.append(f"num_batches_tracked {batches:+d}")
            grads = sum(r.grad for r in mine)
            if affine and grads:
                what.append(f"gamma/beta received gradients in {grads} of {len(mine)} records")
            moved = max((r.affine_change for r in mine), default=0.0)
            if affine and moved:
                what.append(f"gamma/beta moved (max |Δ| per record {moved:.3g})")
            if what:
                lines.append(f"{name!r}: " + ", ".join(what))
        return lines

    def assert_unchanged(self) -> None:
        """Raise AssertionError naming the layers whose running statistics (or counter) moved."""
        lines = self._problems(affine=False)
        if lines:
            raise AssertionError(
                "running statistics changed during bnkit.watch():\n  " + "\n  ".join(lines)
            )

    def assert_frozen(self) -> None:
        """Raise AssertionError naming the layers that are not frozen.

        Frozen means: running statistics and ``num_batches_tracked`` unchanged, no gradient
        reached gamma/beta, and gamma/beta unchanged.
        """
        lines = self._problems(affine=True)
        if lines:
            raise AssertionError(
                "BatchNorm layers were not frozen during bnkit.watch():\n  " + "\n  ".join(lines)
            )

    def summary(self) -> out.Table:
        """One row per layer over the whole watch (``str()`` it, or ``.print()`` it)."""
        return out.summary(self)

    def plot(self, path: str | os.PathLike[str]) -> None:
        """Write a PNG of each layer's running-statistics drift per step (needs matplotlib)."""
        out.plot(self, path)


def watch(model: nn.Module, *, writer: Any = None, every: int = 1, where: Where = None) -> Watch:
    """Watch the BatchNorm layers of a model during a block of training or evaluation steps.

    Args:
        model: the model; each forward of it starts a step (wrappers are seen through).
        writer: a TensorBoard ``SummaryWriter`` (anything with ``add_scalar``), or a log
            directory to create one in (needs the tensorboard package); None for no logging.
        every: record every ``every`` steps (a record then covers ``every`` steps).
        where: which BatchNorm layers to watch (all by default).

    Raises:
        SelectionError: no BatchNorm layer is selected.
        DiagnosticError: ``every`` is not a positive integer, or ``writer`` is unusable.
        MissingDependencyError: ``writer`` is a directory and tensorboard is not installed.

    Examples:
        >>> import torch, torch.nn as nn, bnkit
        >>> model = bnkit.freeze(nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
        >>> with bnkit.watch(model) as w:
        ...     model(torch.randn(8, 4)).sum().backward()
        >>> w.assert_frozen()
    """
    return Watch(model, writer=writer, every=every, where=where)


def _uses_batch(layer: nn.Module) -> bool:
    """Whether the layer normalizes with batch statistics now (the hot path of the hook)."""
    state = state_of(layer)
    if state is not None:
        return state.policy.uses_batch_stats(layer.training)
    if isinstance(layer, _BatchNorm) and getattr(layer, "_bnkit_frozen_policy", None) is None:
        return layer.training or (layer.running_mean is None and layer.running_var is None)
    facts = layer_facts("", layer)
    return bool(behaviour(layer, layer.training, facts.policy).batch)
