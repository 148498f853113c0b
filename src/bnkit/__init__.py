"""bnkit: BatchNorm that behaves exactly as you mean it to, and tells you what it did.

Start with :func:`apply` (or :func:`freeze`) and a :class:`Policy` or preset name,
:func:`explain` to see every number a layer computes, and :func:`report`, :func:`check` and
:func:`watch` to see what the layers of a model really do.
"""

from bnkit._surgery import Where
from bnkit._version import __version__
from bnkit.apply import apply, freeze, managed_layers, policy_of, unfreeze, using
from bnkit.diagnostics.check import check
from bnkit.diagnostics.findings import Finding, Severity
from bnkit.diagnostics.report import LayerRow, Report, report
from bnkit.diagnostics.watch import LayerStep, Watch, watch
from bnkit.distributed import desynchronize, is_synchronized, synchronize
from bnkit.errors import (
    BNKitError,
    DiagnosticError,
    InputError,
    LayerError,
    MissingDependencyError,
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
    "DiagnosticError",
    "Explanation",
    "Finding",
    "InputError",
    "LayerError",
    "LayerRow",
    "LayerStep",
    "MissingDependencyError",
    "NonFiniteBatchWarning",
    "Normalize",
    "Phase",
    "Policy",
    "PolicyError",
    "PresetInfo",
    "ReferenceStep",
    "Report",
    "SelectionError",
    "Severity",
    "Tent",
    "Update",
    "Watch",
    "Where",
    "__version__",
    "apply",
    "check",
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
    "report",
    "softmax_entropy",
    "synchronize",
    "tent",
    "unfreeze",
    "using",
    "watch",
]
