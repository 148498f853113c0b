"""bnkit: BatchNorm that behaves exactly as you mean it to, and tells you what it did.

Start with :func:`apply` (or :func:`freeze`) and a :class:`Policy` or preset name, and
:func:`explain` to see every number a layer computes.
"""

from bnkit._surgery import Where
from bnkit._version import __version__
from bnkit.apply import apply, freeze, managed_layers, policy_of, unfreeze, using
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
from bnkit.distributed import desynchronize, is_synchronized, synchronize
from bnkit.errors import (
    BNKitError,
    FuseWarning,
    InputError,
    LayerError,
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
    "Explanation",
    "FrozenBatchNorm",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "FuseReport",
    "FuseWarning",
    "InputError",
    "LayerError",
    "LayerStats",
    "NonFiniteBatchWarning",
    "Normalize",
    "Phase",
    "Policy",
    "PolicyError",
    "PresetInfo",
    "RecalibrationError",
    "ReferenceStep",
    "SelectionError",
    "StatBank",
    "StatSet",
    "StatsError",
    "StudyError",
    "Tent",
    "Update",
    "Where",
    "__version__",
    "apply",
    "capture_stats",
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
    "softmax_entropy",
    "stat_bank",
    "synchronize",
    "tent",
    "to_frozen",
    "to_sync",
    "unfreeze",
    "using",
]
