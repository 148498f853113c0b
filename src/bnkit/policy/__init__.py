"""Policies: what a BatchNorm layer does, as one immutable value on three axes.

* :class:`Normalize` — which statistics normalize the input;
* :class:`Update` (with ``momentum``) and :class:`Phase` — how and when the running statistics
  change;
* :class:`Affine` — whether gamma/beta train.

PyTorch's flags (``training``, ``track_running_stats``, ``momentum``, ``requires_grad``) each
touch more than one of these; a :class:`Policy` names each once. Presets are named policies
(:func:`preset`). The formulas behind each choice are in :mod:`bnkit.functional`.
"""

from bnkit.policy.axes import DEFAULT_EPS, DEFAULT_MOMENTUM, Affine, Normalize, Phase, Update
from bnkit.policy.core import Policy, PresetInfo
from bnkit.policy.registry import preset, preset_info, presets, register_preset, resolve

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_MOMENTUM",
    "Affine",
    "Normalize",
    "Phase",
    "Policy",
    "PresetInfo",
    "Update",
    "preset",
    "preset_info",
    "presets",
    "register_preset",
    "resolve",
]
