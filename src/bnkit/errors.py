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
    ├── MissingDependencyError (ImportError)
    │                                an optional dependency is not installed (names the extra)
    ├── RecalibrationError (RuntimeError)
    │                                a recalibration pass that cannot give the statistics asked
    ├── StatsError (KeyError)        a statistic set that does not fit the model, or an
    │                                unknown set name
    ├── DistributedError (RuntimeError)
    │                                an exchange with the other ranks failed or waited too
    │                                long (another rank failed or ran short)
    └── StudyError (ValueError)      a study grid, model or data set that ``bnkit study``
                                     cannot run (bad config, missing folders, no BatchNorm)

    NonFiniteBatchWarning (RuntimeWarning)
                                     a batch with NaN/Inf whose running-statistics update
                                     was skipped
    FuseWarning (UserWarning)        ``bnkit.fuse`` could not trace a model with torch.fx and
                                     folded nothing (an example input finds the pairs)
"""

from __future__ import annotations

__all__ = [
    "BNKitError",
    "DiagnosticError",
    "DistributedError",
    "FuseWarning",
    "InputError",
    "LayerError",
    "MissingDependencyError",
    "NonFiniteBatchWarning",
    "PolicyError",
    "RecalibrationError",
    "SelectionError",
    "StatsError",
    "StudyError",
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


class RecalibrationError(BNKitError, RuntimeError):
    """A recalibration pass cannot give the statistics asked for (data, layers, arguments)."""


class StatsError(BNKitError, KeyError):
    """A statistic set does not fit the model (names, shapes), or a set name is unknown.

    A ``KeyError`` so that named-set lookups behave as mappings do; the message prints as is.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DistributedError(BNKitError, RuntimeError):
    """An exchange with the other ranks failed or waited past its limit."""


class StudyError(BNKitError, ValueError):
    """``bnkit study`` cannot run as asked: a bad grid, model or data set (the message says why)."""


class NonFiniteBatchWarning(RuntimeWarning):
    """A batch produced NaN/Inf statistics; the running statistics were left unchanged."""


class FuseWarning(UserWarning):
    """``bnkit.fuse`` could not trace the model with torch.fx, so it folded nothing; passing
    ``example_input=`` finds the pairs on a real forward instead."""
