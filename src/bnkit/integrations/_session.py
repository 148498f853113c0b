"""What a trainer callback does, whatever the trainer: a policy from fit start to fit end, the
numbers of a :func:`bnkit.watch` per logging interval, and an optional recalibration and restore
at the end.

The numbers come from the watch's own measuring code (:mod:`bnkit.diagnostics._watch_measure`),
over every BatchNorm layer of the model, for the interval since the previous report:

==============================  ==============================================================
``bnkit/layers_moved``          layers whose running statistics or counter changed
``bnkit/updates_per_step``      the most any layer's ``num_batches_tracked`` grew, per step
                                (1 for plain training; 2 means a double update per step)
``bnkit/max_mean_change``       the largest ``|Δ running_mean|`` of any channel
``bnkit/max_var_change``        the largest ``|Δ running_var|``
``bnkit/max_drift``             the largest drift from fit start (mean symmetric KL per
                                channel, as :class:`bnkit.diagnostics.LayerStep`)
``bnkit/max_affine_change``     the largest ``|Δ|`` of gamma/beta
==============================  ==============================================================

With ``per_layer=True`` each layer adds ``bnkit/<layer>/<quantity>`` as a watch's TensorBoard
scalars do (``mean_change``, ``var_change``, ``drift``, ``batches``, ``affine_change``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch.nn as nn

from bnkit.apply import apply, using
from bnkit.diagnostics._watch_measure import Change, Layout, Snap
from bnkit.errors import PolicyError
from bnkit.layers.select import Where, bn_layers, unwrap
from bnkit.policy import Policy, resolve
from bnkit.stats import recalibrate as _recalibrate

__all__ = ["Session", "metrics"]


def metrics(changes: dict[str, Change], steps: int, per_layer: bool) -> dict[str, float]:
    """The logged numbers for one interval of ``steps`` steps (see the module notes)."""
    values = list(changes.values())
    out = {
        "bnkit/layers_moved": float(sum(bool(c.mean or c.var or c.batches) for c in values)),
        "bnkit/updates_per_step": max((c.batches for c in values), default=0) / max(steps, 1),
        "bnkit/max_mean_change": max((c.mean or 0.0 for c in values), default=0.0),
        "bnkit/max_var_change": max((c.var or 0.0 for c in values), default=0.0),
        "bnkit/max_drift": max((c.drift or 0.0 for c in values), default=0.0),
        "bnkit/max_affine_change": max((c.affine for c in values), default=0.0),
    }
    if per_layer:
        for name, c in changes.items():
            base = f"bnkit/{name or 'root'}"
            for key, value in (
                ("mean_change", c.mean),
                ("var_change", c.var),
                ("drift", c.drift),
                ("batches", c.batches),
                ("affine_change", c.affine),
            ):
                if value is not None:
                    out[f"{base}/{key}"] = float(value)
    return out


class Session:
    """One fit: :meth:`begin`, :meth:`measure` per report, :meth:`end` (or :meth:`abort`)."""

    def __init__(
        self,
        policy: Policy | str | None,
        where: Where,
        *,
        recalibrate: Iterable[Any] | None,
        num_batches: int | None,
        restore: bool,
        per_layer: bool,
    ) -> None:
        self.policy = None if policy is None else resolve(policy)
        if policy is None and where is not None:
            raise PolicyError("where= selects the layers a policy goes to; give a policy too")
        if recalibrate is not None and not hasattr(recalibrate, "__iter__"):
            raise PolicyError(
                f"recalibrate= takes the data to recalibrate on at fit end: a DataLoader or "
                f"another iterable of batches (got {type(recalibrate).__name__})"
            )
        self.where, self.data, self.num_batches = where, recalibrate, num_batches
        self.restore, self.per_layer = restore, per_layer
        self.model: nn.Module | None = None
        self._undo = contextlib.ExitStack()
        self._layout: Layout | None = None
        self._start: list[Snap] = []
        self._prev: list[Snap] = []

    def begin(self, model: nn.Module) -> None:
        """Apply the policy (held until :meth:`end` when restoring) and start measuring."""
        if self.model is not None:
            self.abort()  # a second fit with the same callback starts afresh
        root = unwrap(model)
        if self.policy is not None:
            if self.restore:
                self._undo.enter_context(using(root, self.policy, self.where))
            else:
                apply(root, self.policy, self.where)
        self.model = root
        layers = list(bn_layers(root))
        self._layout = Layout(layers) if layers else None
        self._start = self._prev = self._layout.snap() if self._layout else []

    def measure(self, steps: int) -> dict[str, float]:
        """The numbers for the ``steps`` steps since the last call (empty before a fit)."""
        if self._layout is None:
            return {}
        now = self._layout.snap()
        changes = self._layout.measure(now, self._prev, self._start)
        self._prev = now
        return metrics(changes, steps, self.per_layer)

    def end(self) -> None:
        """Recalibrate on the given data (policy still in place), then restore if asked."""
        try:
            if self.model is not None and self.data is not None:
                _recalibrate(self.model, self.data, num_batches=self.num_batches, progress=False)
        finally:
            self.abort()

    def abort(self) -> None:
        """Restore the layers if asked, and stop measuring."""
        self._undo.close()
        self.model, self._layout, self._start, self._prev = None, None, [], []
