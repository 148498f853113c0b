"""Findings and the table of rules that produce them.

A rule is one small function ``rule(ctx) -> list[Finding]`` registered under a stable ``kind``
with what it needs (the model alone, an example input, or an optimizer). Adding a kind is
writing one function with the :func:`rule` decorator.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from bnkit.errors import DiagnosticError

if TYPE_CHECKING:
    from bnkit.diagnostics._example import Probe
    from bnkit.diagnostics._facts import LayerFacts

__all__ = ["Context", "Finding", "Rule", "Severity", "kinds", "rule", "rules"]


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


@dataclasses.dataclass(frozen=True)
class Rule:
    """A registered rule."""

    kind: str
    needs: str
    """``"model"``, ``"input"`` (an example input) or ``"optimizer"``."""
    summary: str
    run: Callable[[Context], list[Finding]]


_RULES: dict[str, Rule] = {}


RuleFn = Callable[[Context], list[Finding]]


def rule(kind: str, needs: str, summary: str) -> Callable[[RuleFn], Rule]:
    """Register ``fn(ctx) -> list[Finding]`` as the rule for ``kind``."""
    if needs not in ("model", "input", "optimizer"):
        raise DiagnosticError(f"needs must be 'model', 'input' or 'optimizer' (got {needs!r})")

    def register(fn: RuleFn) -> Rule:
        if kind in _RULES:
            raise DiagnosticError(f"a rule for kind {kind!r} is already registered")
        made = Rule(kind, needs, summary, fn)
        _RULES[kind] = made
        return made

    return register


def rules() -> list[Rule]:
    """Every registered rule, in registration order."""
    from bnkit.diagnostics import (  # noqa: F401 (importing registers the rules)
        _rules_convention,
        _rules_input,
        _rules_layout,
        _rules_optim,
        _rules_phase,
        _rules_stats,
    )

    return list(_RULES.values())


def kinds() -> list[str]:
    """Every finding kind :func:`bnkit.check` knows."""
    return [r.kind for r in rules()]
