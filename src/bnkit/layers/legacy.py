"""Reading layers pickled by bnkit 0.1, which kept their state in ``_bnkit_*`` attributes.

Only unpickling uses this: the old attribute names and classes are turned into the one
:class:`~bnkit.layers.state.ManagedState` a managed layer carries now.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import torch.nn as nn

from bnkit.layers.state import ATTR, ManagedState, Original
from bnkit.layers.sync import SyncSpec
from bnkit.policy import Normalize, Policy, Update

__all__ = ["LayerState", "Plan", "upgrade"]


@dataclasses.dataclass(frozen=True)
class LayerState:
    """bnkit 0.1's record of a layer before it was managed (``bnkit._surgery.LayerState``)."""

    cls: type[nn.Module]
    momentum: float | None
    requires_grad: tuple[bool | None, bool | None]
    bnkit: dict[str, Any]


class Plan(NamedTuple):
    """bnkit 0.1's per-phase plan (``bnkit._running.Plan``); read only to be dropped."""

    mode: Normalize
    update: bool
    cumulative: bool
    momentum: float
    frozen_affine: bool


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A pickled ``__dict__`` with bnkit 0.1's attributes replaced by a ``ManagedState``."""
    if "_bnkit_policy" not in state:
        return state
    state = dict(state)
    old: Policy = state.pop("_bnkit_policy")
    original: LayerState = state.pop("_bnkit_original")
    name: str = state.pop("_bnkit_name", "")
    sync = None if state.pop("_bnkit_sync", None) is None else SyncSpec()  # 0.1: "world"
    for key in [k for k in state if k.startswith(("_bnkit_plan", "_bnkitprobe"))]:
        del state[key]
    # 0.1 gave every policy a momentum (0.1 unless named), which the layer's ``momentum``
    # attribute already holds; today an unnamed momentum is the layer's own.
    fields = dict(vars(old))
    if fields["update"] is not Update.EMA or fields["momentum"] == 0.1:
        fields["momentum"] = None
    policy = Policy(**fields)
    before = Original(original.cls, original.momentum, original.requires_grad)
    state[ATTR] = ManagedState.make(policy, name, before, sync)
    return state
