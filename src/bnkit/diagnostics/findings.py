"""What a finding is, and what a rule may look at.

A rule is one plain function ``rule(ctx: Context) -> list[Finding]`` in a ``_rules_*`` module;
:mod:`bnkit.diagnostics.rules` lists them, in order, with the ``kind`` each reports and what it
needs. This module imports none of them.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch.nn as nn

if TYPE_CHECKING:
    from bnkit.diagnostics._example import Probe
    from bnkit.diagnostics._facts import LayerFacts

__all__ = ["Context", "Finding", "Severity"]


class Severity(str, enum.Enum):
    """How bad a finding is. ``bnkit inspect`` exits 1 when an error is found."""

    ERROR = "error"
    """The outputs are wrong or the next step fails."""
    WARNING = "warning"
    """Probably not what was meant; the model trains or predicts differently than it seems."""
    INFO = "info"
    """Worth knowing; often intended."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


_ORDER = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem (or fact) about some BatchNorm layers, with its fix."""

    kind: str
    """Stable identifier, e.g. ``"stale_running_stats"`` (see :func:`kinds`)."""
    severity: Severity
    layers: tuple[str, ...]
    """Qualified names of the layers concerned."""
    what: str
    """What happens."""
    why: str
    """Why it matters."""
    fix: str
    """How to fix it, usually one bnkit call."""

    def __str__(self) -> str:
        names = ", ".join(repr(n) for n in self.layers[:6])
        if len(self.layers) > 6:
            names += f", … ({len(self.layers)} layers)"
        return (
            f"{self.severity.value} [{self.kind}] {names}\n"
            f"  what: {self.what}\n  why:  {self.why}\n  fix:  {self.fix}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "kind": self.kind,
            "severity": self.severity.value,
            "layers": list(self.layers),
            "what": self.what,
            "why": self.why,
            "fix": self.fix,
        }

    def sort_key(self) -> tuple[int, str, tuple[str, ...]]:
        """Errors first, then by kind and layers."""
        return _ORDER[self.severity], self.kind, self.layers


@dataclasses.dataclass(frozen=True)
class Context:
    """What a rule may look at. Rules must not change anything."""

    model: nn.Module
    """The (unwrapped) model."""
    layers: Sequence[LayerFacts]
    """Every BatchNorm layer, as it was before the example forward."""
    probe: Probe | None
    """What the example forward saw (None without ``example_input``)."""
    optimizers: Sequence[Any]
    """The optimizers given (empty when none)."""
    domain_threshold: float
    min_values: int

    def managed_names(self) -> set[str]:
        """Names of the layers whose behaviour bnkit decides."""
        return {f.name for f in self.layers if f.bnkit}
