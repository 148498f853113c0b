"""``bnkit.report``: one row per BatchNorm layer saying what it really does now.

A report reads the model and changes nothing. ``str(report)`` is a plain-text table,
``report.print()`` uses rich on a terminal, ``to_dict()``/``to_json()`` give JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn

from bnkit.diagnostics._facts import (
    LayerFacts,
    affine_state,
    as_module,
    batches_tracked,
    facts,
    never_updated,
    running_stats,
)
from bnkit.errors import SelectionError
from bnkit.layers.managed import original_class

__all__ = ["LayerRow", "Report", "report"]


@dataclasses.dataclass(frozen=True)
class LayerRow:
    """One BatchNorm layer in a :class:`Report`."""

    name: str
    """Qualified name in the model (``""`` for the root)."""
    cls: str
    """Class name (the original class for a layer bnkit manages)."""
    num_features: int | None
    training: bool
    """The layer's phase (``module.training``)."""
    normalizes_with: str
    """``"batch"``, ``"running"`` or ``"unknown"``: which statistics normalize now."""
    updates: bool | None
    """Whether a forward now changes the running statistics."""
    behaviour: str
    """One line: statistics, update rule and gamma/beta, for the current phase."""
    affine: str
    """``"trainable"``, ``"frozen"``, ``"none"`` or a per-parameter mix."""
    momentum: float | None
    eps: float | None
    num_batches_tracked: int | None
    mean_abs_mean: float | None
    """Mean over channels of ``|running_mean|`` (None without running statistics)."""
    mean_var: float | None
    """Mean over channels of ``running_var``."""
    min_var: float | None
    """Smallest ``running_var``."""
    finite: bool | None
    """Running statistics free of NaN/Inf."""
    stats_updated: bool | None
    """Running statistics ever updated (False: still mean 0, var 1, counter 0)."""
    policy: str | None
    """The bnkit policy (``repr``) when bnkit manages the layer."""
    note: str = ""
    """Why no bnkit policy describes the layer's flags, when none does."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (non-finite summaries become None; see ``finite``)."""
        out = dataclasses.asdict(self)
        for key, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[key] = None
        return out

    def cells(self) -> dict[str, str]:
        """The row as table cells."""
        return {
            "layer": self.name or "(root)",
            "class": self.cls,
            "C": _s(self.num_features),
            "phase": "train" if self.training else "eval",
            "now": self.behaviour,
            "gamma/beta": self.affine,
            "momentum": _s(self.momentum),
            "eps": _s(self.eps),
            "batches": _s(self.num_batches_tracked),
            "running stats": self._stats_cell(),
            "policy": self.policy or "-",
        }

    def _stats_cell(self) -> str:
        if self.mean_var is None:
            return "none"
        if self.stats_updated is False:
            return "never updated (mean 0, var 1)"
        text = f"|mean| {self.mean_abs_mean:.3g}, var {self.mean_var:.3g} (min {self.min_var:.3g})"
        return text if self.finite else f"NON-FINITE: {text}"


@dataclasses.dataclass(frozen=True)
class Report:
    """The BatchNorm layers of a model and what each does now."""

    model: str
    """The model's class name."""
    training: bool
    """The model's phase."""
    rows: tuple[LayerRow, ...]

    def __iter__(self) -> Iterator[LayerRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, name: str) -> LayerRow:
        for row in self.rows:
            if row.name == name:
                return row
        known = ", ".join(repr(r.name) for r in self.rows[:8])
        raise SelectionError(f"no BatchNorm layer named {name!r} in the report; layers: {known}")

    @property
    def title(self) -> str:
        """The report's first line: the model, its phase and how many layers it has."""
        phase = "train" if self.training else "eval"
        return f"BatchNorm layers of {self.model} (model in {phase}(), {len(self.rows)} layers)"

    def __str__(self) -> str:
        from bnkit.cli._render import plain_table

        if not self.rows:
            return f"{self.title}: (none)"
        return f"{self.title}\n{plain_table([r.cells() for r in self.rows])}"

    def print(self) -> None:
        """Print the table (rich on a terminal when installed, plain text elsewhere)."""
        from bnkit.cli._render import print_table

        print_table(self.title, [r.cells() for r in self.rows])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"model", "training", "layers": [row dicts]}``."""
        return {
            "model": self.model,
            "training": self.training,
            "layers": [r.to_dict() for r in self.rows],
        }

    def to_json(self, **kwargs: Any) -> str:
        """``json.dumps(self.to_dict(), **kwargs)`` (strict JSON: no NaN)."""
        return json.dumps(self.to_dict(), allow_nan=False, **kwargs)


def report(model: nn.Module) -> Report:
    """One row per BatchNorm layer: what it does now, its settings and its running statistics.

    The behaviour comes from each layer's policy and its current phase (``module.training``),
    so a layer bnkit manages shows what its policy does, and a plain layer what its flags do.
    The model is not changed.

    Examples:
        >>> import torch.nn as nn, bnkit
        >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
        >>> row = bnkit.report(model)["1"]
        >>> row.normalizes_with, row.stats_updated
        ('running', False)

    Raises:
        DiagnosticError: ``model`` is not an ``nn.Module``.
    """
    root = as_module(model, "report")
    return Report(
        model=type(root).__name__,
        training=root.training,
        rows=tuple(_row(f) for f in facts(root)),
    )


def _row(f: LayerFacts) -> LayerRow:
    layer = f.layer
    mean, var = running_stats(layer)
    summary: dict[str, Any] = {"mean_abs_mean": None, "mean_var": None, "min_var": None}
    finite = None
    if mean is not None and var is not None:
        with torch.no_grad():
            m, v = mean.detach().double(), var.detach().double()
            finite = bool(torch.isfinite(m).all() and torch.isfinite(v).all())
            if m.numel():
                summary = {
                    "mean_abs_mean": float(m.abs().mean()),
                    "mean_var": float(v.mean()),
                    "min_var": float(v.min()),
                }
    momentum = getattr(layer, "momentum", None)
    eps = getattr(layer, "eps", None)
    features = getattr(layer, "num_features", None)
    return LayerRow(
        name=f.name,
        cls=_class_name(layer),
        num_features=features if isinstance(features, int) else None,
        training=f.training,
        normalizes_with={True: "batch", False: "running", None: "unknown"}[f.now.batch],
        updates=f.now.updates,
        behaviour=f.now.text,
        affine=affine_state(f.layer, f.policy),
        momentum=float(momentum) if isinstance(momentum, (int, float)) else None,
        eps=float(eps) if isinstance(eps, (int, float)) else None,
        num_batches_tracked=batches_tracked(layer),
        finite=finite,
        stats_updated=None if mean is None else not never_updated(layer),
        policy=repr(f.policy) if f.bnkit and f.policy is not None else None,
        note=f.note,
        **summary,
    )


def _class_name(layer: nn.Module) -> str:
    return original_class(layer).__name__


def _s(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
