"""bnkit: BatchNorm that behaves exactly as you mean it to, and tells you what it did.

Start with :func:`apply` (or :func:`freeze`) and a :class:`Policy` or preset name, and
:func:`explain` to see every number a layer computes.
"""

from bnkit._surgery import Where
from bnkit._version import __version__
from bnkit.apply import apply, freeze, managed_layers, policy_of, unfreeze, using
from bnkit.distributed import desynchronize, is_synchronized, synchronize
from bnkit.errors import (
    BNKitError,
    InputError,
    LayerError,
    NonFiniteBatchWarning,
    PolicyError,
    SelectionError,
)
from bnkit.explain import Explanation, explain
from bnkit.policy import Affine, Normalize, Phase, Policy, Update
from bnkit.presets import PresetInfo, preset, preset_info, presets, register_preset
from bnkit.reference import ReferenceStep, reference_forward, reference_step
from bnkit.tent import Tent, softmax_entropy, tent

__all__ = [
    "Affine",
    "BNKitError",
    "Explanation",
    "InputError",
    "LayerError",
    "NonFiniteBatchWarning",
    "Normalize",
    "Phase",
    "Policy",
    "PolicyError",
    "PresetInfo",
    "ReferenceStep",
    "SelectionError",
    "Tent",
    "Update",
    "Where",
    "__version__",
    "apply",
    "desynchronize",
    "explain",
    "freeze",
    "is_synchronized",
    "managed_layers",
    "policy_of",
    "preset",
    "preset_info",
    "presets",
    "reference_forward",
    "reference_step",
    "register_preset",
    "softmax_entropy",
    "synchronize",
    "tent",
    "unfreeze",
    "using",
]
