"""Deprecated module path: the presets live in :mod:`bnkit.policy` (``bnkit.preset`` etc.)."""

from __future__ import annotations

import warnings
from typing import Any

from bnkit.policy import registry as _registry

__all__ = [  # noqa: F822 (served by __getattr__, with a warning)
    "PresetInfo",
    "preset",
    "preset_info",
    "presets",
    "register_preset",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        warnings.warn(
            f"bnkit.presets.{name} moved: use bnkit.{name} (bnkit.presets goes away in 0.3)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(_registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
