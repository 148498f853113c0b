"""Deprecated module path: use :mod:`bnkit.stats` (or the names on ``bnkit`` itself)."""

from __future__ import annotations

import warnings
from typing import Any

from bnkit.stats import sets as _moved

__all__ = [  # noqa: F822 (served by __getattr__, with a warning)
    "LayerStats",
    "StatSet",
    "capture_stats",
    "load_stats",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        warnings.warn(
            f"bnkit.statsets.{name} moved: use bnkit.{name} (bnkit.statsets goes away in 0.3)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(_moved, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
