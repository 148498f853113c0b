"""Exceptions and warnings raised by bnkit.

Every error says what was expected, what came, and how to fix it, and names the layer
when one is involved. The hierarchy::

    BNKitError                       base of every bnkit exception
    ├── PolicyError (ValueError)     an invalid policy setting or an unknown preset name
    ├── SelectionError (LookupError) a ``where=`` selection that matches no BatchNorm layer
    ├── InputError (ValueError)      a forward input that a layer cannot normalize
    ├── LayerError (TypeError)       a layer that cannot take the requested behaviour
    ├── DiagnosticError (ValueError) a diagnostics call (check, watch, inspect) that cannot run
    │                                as asked: a bad setting, factory or checkpoint
    └── MissingDependencyError (ImportError)
                                     an optional dependency is not installed (names the extra)

    NonFiniteBatchWarning (RuntimeWarning)
                                     a batch with NaN/Inf whose running-statistics update
                                     was skipped
"""

from __future__ import annotations

__all__ = [
    "BNKitError",
    "DiagnosticError",
    "InputError",
    "LayerError",
    "MissingDependencyError",
    "NonFiniteBatchWarning",
    "PolicyError",
    "SelectionError",
]


class BNKitError(Exception):
    """Base class of every exception bnkit raises."""


class PolicyError(BNKitError, ValueError):
    """A policy setting is invalid, or a preset name is unknown."""


class SelectionError(BNKitError, LookupError):
    """A ``where=`` selection matched no BatchNorm layer."""


class InputError(BNKitError, ValueError):
    """A layer received an input it cannot normalize (dims, channels, batch size)."""


class LayerError(BNKitError, TypeError):
    """A layer cannot take the requested behaviour (no buffers, lazy, foreign forward)."""


class DiagnosticError(BNKitError, ValueError):
    """A diagnostics call cannot run as asked (a bad setting, model factory or checkpoint)."""


class MissingDependencyError(BNKitError, ImportError):
    """An optional dependency is missing; the message names the pip extra that installs it."""


class NonFiniteBatchWarning(RuntimeWarning):
    """A batch produced NaN/Inf statistics; the running statistics were left unchanged."""
