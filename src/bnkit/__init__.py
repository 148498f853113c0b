"""bnkit: BatchNorm that behaves exactly as you mean it to, and tells you what it did.

Start with :func:`apply` (or :func:`freeze`) and a :class:`Policy` or preset name,
:func:`explain` to see every number a layer computes, :func:`report`, :func:`check` and
:func:`watch` to see what the layers of a model really do, and :func:`recalibrate` when the
running statistics no longer fit the data. Everything else lives in the submodules:
:mod:`bnkit.policy`, :mod:`bnkit.functional`, :mod:`bnkit.layers`, :mod:`bnkit.stats`,
:mod:`bnkit.convert`, :mod:`bnkit.diagnostics`, :mod:`bnkit.training` (real training loops),
:mod:`bnkit.integrations` (Lightning, transformers), :mod:`bnkit.reference`, :mod:`bnkit.errors`.
"""

from typing import Any as _Any

from bnkit import presets as _presets_module  # noqa: F401  (before the function of that name)
from bnkit._deprecated import moved as _moved
from bnkit._version import __version__
from bnkit.apply import apply, bn_layers, freeze, managed_layers, policy_of, unfreeze, using
from bnkit.convert import from_frozen, from_sync, fuse, to_frozen, to_sync
from bnkit.diagnostics import check, report, watch
from bnkit.distributed import desynchronize, synchronize
from bnkit.errors import BNKitError, InputError, LayerError, PolicyError
from bnkit.explain import explain
from bnkit.layers import register_layer
from bnkit.policy import Policy, preset, presets, register_preset
from bnkit.stats import StatSet, capture_stats, load_stats, recalibrate, stat_bank
from bnkit.tent import Tent, tent
from bnkit.training import accumulate, average_stats, distribute_stats, mask

__all__ = [
    "BNKitError",
    "InputError",
    "LayerError",
    "Policy",
    "PolicyError",
    "StatSet",
    "Tent",
    "__version__",
    "accumulate",
    "apply",
    "average_stats",
    "bn_layers",
    "capture_stats",
    "check",
    "desynchronize",
    "distribute_stats",
    "explain",
    "freeze",
    "from_frozen",
    "from_sync",
    "fuse",
    "load_stats",
    "managed_layers",
    "mask",
    "policy_of",
    "preset",
    "presets",
    "recalibrate",
    "register_layer",
    "register_preset",
    "report",
    "stat_bank",
    "synchronize",
    "tent",
    "to_frozen",
    "to_sync",
    "unfreeze",
    "using",
    "watch",
]


def __getattr__(name: str) -> _Any:
    return _moved(name)
