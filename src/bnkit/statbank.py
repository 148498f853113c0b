"""Deprecated module path: use :mod:`bnkit.stats` (or the names on ``bnkit`` itself)."""

from __future__ import annotations

import warnings
from typing import Any

from bnkit.stats import bank as _moved

__all__ = [  # noqa: F822 (served by __getattr__, with a warning)
    "StatBank",
    "stat_bank",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        warnings.warn(
            f"bnkit.statbank.{name} moved: use bnkit.{name} (bnkit.statbank goes away in 0.3)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(_moved, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
