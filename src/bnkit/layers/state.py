"""The one state object a managed layer carries: its policy, name, plans and what to restore.

bnkit keeps everything it knows about a managed layer in a single attribute (``_bnkit``) holding
a frozen :class:`ManagedState`; changing a policy replaces the object, so a saved state can be
put back as it was.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, NamedTuple

import torch.nn as nn
from torch import Tensor

from bnkit.layers.sync import SyncSpec
from bnkit.policy import Affine, Normalize, Policy, Update

if TYPE_CHECKING:
    from bnkit.layers.pending import Pending

__all__ = ["ATTR", "ManagedState", "Original", "Plan", "plan_for", "state_of"]

ATTR = "_bnkit"
"""The attribute of a managed layer that holds its :class:`ManagedState`."""


class Plan(NamedTuple):
    """What one forward does in one phase: resolved once, when the policy is applied."""

    mode: Normalize
    """The statistics used: BATCH, RUNNING, RENORM, GHOST or PRIOR."""
    update: bool
    """Update the running statistics."""
    cumulative: bool
    """Update factor 1/k; otherwise ``momentum`` (None: the layer's ``momentum``, read live)."""
    momentum: float | None
    frozen_affine: bool


def plan_for(policy: Policy, training: bool) -> Plan:
    """Resolve a policy and a phase into a :class:`Plan`."""
    return Plan(
        mode=policy.stats_in(training),
        update=policy.updates(training),
        cumulative=policy.update is Update.CUMULATIVE,
        momentum=policy.momentum,
        frozen_affine=policy.affine is Affine.FROZEN,
    )


@dataclasses.dataclass(frozen=True)
class Original:
    """What bnkit may change on a layer, as it was before: class, momentum, requires_grad."""

    cls: type[nn.Module]
    momentum: float | None
    requires_grad: tuple[bool | None, bool | None]


@dataclasses.dataclass(frozen=True)
class ManagedState:
    """Everything bnkit keeps on a managed layer."""

    policy: Policy
    name: str
    original: Original
    """The layer before bnkit managed it (what :func:`bnkit.unfreeze` restores)."""
    train: Plan
    eval: Plan
    sync: SyncSpec | None = None
    """How the layer synchronizes when :func:`bnkit.synchronize` was applied (else None)."""
    pending: Pending | None = None
    """Where updates are held back inside :func:`bnkit.accumulate` (else None: applied now)."""
    mask: Tensor | None = None
    """Which positions of an ``(N, C, L)`` input are valid inside :func:`bnkit.mask`."""

    @classmethod
    def make(
        cls, policy: Policy, name: str, original: Original, sync: SyncSpec | None = None
    ) -> ManagedState:
        """A state with the plans of ``policy``."""
        return cls(policy, name, original, plan_for(policy, True), plan_for(policy, False), sync)

    def label(self, layer: nn.Module) -> str:
        """How errors name the layer."""
        return self.name or type(layer).__name__


def state_of(layer: nn.Module) -> ManagedState | None:
    """The layer's :class:`ManagedState`, or None when bnkit does not manage it."""
    state = vars(layer).get(ATTR)
    return state if isinstance(state, ManagedState) else None
