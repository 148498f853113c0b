"""Names that moved from ``bnkit`` itself to a submodule: still reachable, with a warning."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

__all__ = ["MOVED", "moved"]

MOVED: dict[str, str] = {
    **dict.fromkeys(
        ["Affine", "Normalize", "Phase", "Update", "PresetInfo", "preset_info"], "bnkit.policy"
    ),
    **dict.fromkeys(
        [
            "DiagnosticError",
            "FuseWarning",
            "MissingDependencyError",
            "NonFiniteBatchWarning",
            "RecalibrationError",
            "SelectionError",
            "StatsError",
            "StudyError",
        ],
        "bnkit.errors",
    ),
    **dict.fromkeys(
        ["Finding", "Severity", "LayerRow", "Report", "LayerStep", "Watch"], "bnkit.diagnostics"
    ),
    **dict.fromkeys(
        [
            "FrozenBatchNorm",
            "FrozenBatchNorm1d",
            "FrozenBatchNorm2d",
            "FrozenBatchNorm3d",
            "FuseReport",
            "fuse_plan",
        ],
        "bnkit.convert",
    ),
    **dict.fromkeys(["LayerStats", "StatBank"], "bnkit.stats"),
    **dict.fromkeys(["ReferenceStep", "reference_forward", "reference_step"], "bnkit.reference"),
    "Explanation": "bnkit.explain",
    "is_synchronized": "bnkit.distributed",
    "softmax_entropy": "bnkit.tent",
    "Where": "bnkit.layers",
}
"""Old top-level name -> the module that holds it now."""


def moved(name: str) -> Any:
    """The object a moved top-level name stands for, with a DeprecationWarning."""
    module = MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'bnkit' has no attribute {name!r}")
    warnings.warn(
        f"bnkit.{name} moved to {module}.{name}; the top-level name goes away in bnkit 0.3",
        DeprecationWarning,
        stacklevel=3,
    )
    return getattr(importlib.import_module(module), name)
