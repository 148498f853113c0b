"""bnkit: BatchNorm that behaves exactly as you mean it to, and tells you what it did.

Start with :func:`apply` (or :func:`freeze`) and a :class:`Policy` or preset name,
:func:`explain` to see every number a layer computes, :func:`report`, :func:`check` and
:func:`watch` to see what the layers of a model really do, and :func:`recalibrate` when the
running statistics no longer fit the data.
"""

from bnkit._surgery import Where
from bnkit._version import __version__
from bnkit.apply import apply, bn_layers, freeze, managed_layers, policy_of, unfreeze, using
from bnkit.convert import (
    FrozenBatchNorm,
    FrozenBatchNorm1d,
    FrozenBatchNorm2d,
    FrozenBatchNorm3d,
    FuseReport,
    from_frozen,
    from_sync,
    fuse,
    fuse_plan,
    to_frozen,
    to_sync,
)
from bnkit.diagnostics.check import check
from bnkit.diagnostics.findings import Finding, Severity
from bnkit.diagnostics.report import LayerRow, Report, report
from bnkit.diagnostics.watch import LayerStep, Watch, watch
from bnkit.distributed import desynchronize, is_synchronized, synchronize
from bnkit.errors import (
    BNKitError,
    DiagnosticError,
    FuseWarning,
    InputError,
    LayerError,
    MissingDependencyError,
    NonFiniteBatchWarning,
    PolicyError,
    RecalibrationError,
    SelectionError,
    StatsError,
    StudyError,
)
from bnkit.explain import Explanation, explain
from bnkit.policy import Affine, Normalize, Phase, Policy, Update
from bnkit.presets import PresetInfo, preset, preset_info, presets, register_preset
from bnkit.recalibrate import recalibrate
from bnkit.reference import ReferenceStep, reference_forward, reference_step
from bnkit.statbank import StatBank, stat_bank
from bnkit.statsets import LayerStats, StatSet, capture_stats, load_stats
from bnkit.tent import Tent, softmax_entropy, tent

__all__ = [
    "Affine",
    "BNKitError",
    "DiagnosticError",
    "Explanation",
    "Finding",
    "FrozenBatchNorm",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "FuseReport",
    "FuseWarning",
    "InputError",
    "LayerError",
    "LayerRow",
    "LayerStats",
    "LayerStep",
    "MissingDependencyError",
    "NonFiniteBatchWarning",
    "Normalize",
    "Phase",
    "Policy",
    "PolicyError",
    "PresetInfo",
    "RecalibrationError",
    "ReferenceStep",
    "Report",
    "SelectionError",
    "Severity",
    "StatBank",
    "StatSet",
    "StatsError",
    "StudyError",
    "Tent",
    "Update",
    "Watch",
    "Where",
    "__version__",
    "apply",
    "bn_layers",
    "capture_stats",
    "check",
    "desynchronize",
    "explain",
    "freeze",
    "from_frozen",
    "from_sync",
    "fuse",
    "fuse_plan",
    "is_synchronized",
    "load_stats",
    "managed_layers",
    "policy_of",
    "preset",
    "preset_info",
    "presets",
    "recalibrate",
    "reference_forward",
    "reference_step",
    "register_preset",
    "report",
    "softmax_entropy",
    "stat_bank",
    "synchronize",
    "tent",
    "to_frozen",
    "to_sync",
    "unfreeze",
    "using",
    "watch",
]
