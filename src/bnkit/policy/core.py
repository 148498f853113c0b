"""The :class:`Policy` value: one immutable choice on each axis, and its named presets' table.

The formulas each axis selects are in :mod:`bnkit.functional`; this module only says which.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any, NamedTuple

from bnkit.errors import PolicyError
from bnkit.policy.axes import AXES, Affine, Normalize, Phase, Update

__all__ = ["Policy", "PresetInfo", "nearest_preset"]


@dataclasses.dataclass(frozen=True)
class Policy:
    """How one BatchNorm layer behaves, whatever ``train()``/``eval()`` is called.

    A policy chooses, independently, which statistics normalize the input
    (:class:`~bnkit.policy.Normalize`), how and when the running statistics change
    (:class:`~bnkit.policy.Update`, :class:`~bnkit.policy.Phase`) and whether gamma/beta train
    (:class:`~bnkit.policy.Affine`). Strings are accepted for every axis
    (``Policy(normalize="running")``). A setting that only applies to another choice
    (``momentum`` without ``update="ema"``, ``ghost_size`` without ``normalize="ghost"``) must
    keep its default, so two policies that behave the same are equal.

    Args:
        normalize: which statistics normalize the input.
        update: how the running statistics change.
        momentum: weight of the new batch for ``update="ema"``, in (0, 1]. ``None`` (the
            default) keeps each layer's own ``momentum`` (PyTorch's ``momentum=None``, a
            cumulative average, included); a number sets it while the policy holds.
        update_in: in which phase the running statistics update.
        affine: whether gamma/beta train.
        r_max: ``normalize="renorm"``: largest correction of the scale, at least 1.
        d_max: ``normalize="renorm"``: largest correction of the shift, at least 0.
        renorm_warmup: ``normalize="renorm"``: updates with limits (1, 0) before the ramp.
        renorm_ramp: ``normalize="renorm"``: updates over which the limits rise linearly.
        ghost_size: ``normalize="ghost"``: samples per ghost batch at most; a batch of ``n``
            is split into ``ceil(n / ghost_size)`` groups as ``torch.chunk`` splits it.
        prior_strength: ``normalize="prior"``: the prior strength N (0 to ``math.inf``).

    Raises:
        PolicyError: a setting is out of range or does not apply to the other choices.

    Examples:
        >>> import bnkit
        >>> bnkit.Policy(normalize="running", update="ema", momentum=0.001)
        bnkit.preset('adapt', momentum=0.001)
        >>> bnkit.Policy(normalize="running", update="never", affine="frozen")
        bnkit.preset('frozen')
    """

    normalize: Normalize = Normalize.PHASE
    update: Update = Update.EMA
    momentum: float | None = None
    update_in: Phase = Phase.TRAIN
    affine: Affine = Affine.TRAINABLE
    r_max: float = 3.0
    d_max: float = 5.0
    renorm_warmup: int = 0
    renorm_ramp: int = 0
    ghost_size: int = 16
    prior_strength: float = 16.0

    def __post_init__(self) -> None:
        for field, axis in AXES.items():
            object.__setattr__(self, field, _coerce(field, axis, getattr(self, field)))
        self._validate_update()
        self._validate_strategy()

    def _validate_update(self) -> None:
        m = self.momentum
        if m is not None:
            if isinstance(m, bool) or not isinstance(m, (int, float)):
                raise PolicyError(f"momentum must be a float in (0, 1] or None (got {m!r})")
            object.__setattr__(self, "momentum", float(m))
            if self.update is not Update.EMA:
                raise PolicyError(
                    f"momentum only applies to update='ema' (got update={self.update.value!r}, "
                    f"momentum={m}); drop momentum or use update='ema'"
                )
            if not 0.0 < m <= 1.0:
                hint = (
                    "; a momentum of 0 means 'never update', say so with update='never'"
                    if m == 0
                    else ""
                )
                raise PolicyError(f"momentum must be in (0, 1] for update='ema' (got {m}){hint}")
        if self.update is Update.NEVER and self.update_in is not Phase.TRAIN:
            raise PolicyError(
                f"update_in only applies when the running statistics update (got "
                f"update='never', update_in={self.update_in.value!r}); drop update_in"
            )

    def _validate_strategy(self) -> None:
        limits = (
            ("r_max", Normalize.RENORM, _number(self.r_max) and 1 <= self.r_max < math.inf),
            ("d_max", Normalize.RENORM, _number(self.d_max) and 0 <= self.d_max < math.inf),
            ("renorm_warmup", Normalize.RENORM, _count(self.renorm_warmup)),
            ("renorm_ramp", Normalize.RENORM, _count(self.renorm_ramp)),
            ("ghost_size", Normalize.GHOST, _count(self.ghost_size) and self.ghost_size >= 1),
            (
                "prior_strength",
                Normalize.PRIOR,
                _number(self.prior_strength) and self.prior_strength >= 0,
            ),
        )
        for name, mode, ok in limits:
            value = getattr(self, name)
            if not ok:
                raise PolicyError(f"{name} must be {_WANT[name]} (got {value!r})")
            if self.normalize is not mode and value != _DEFAULTS[name]:
                raise PolicyError(
                    f"{name} only applies to normalize={mode.value!r} (got "
                    f"normalize={self.normalize.value!r}, {name}={value!r}); drop {name}"
                )

    # ------------------------------------------------------------------ behaviour per phase
    def stats_in(self, training: bool) -> Normalize:
        """The statistics used in this phase: BATCH, RUNNING, RENORM, GHOST or PRIOR."""
        if self.normalize is Normalize.PHASE:
            return Normalize.BATCH if training else Normalize.RUNNING
        if self.normalize in (Normalize.RENORM, Normalize.GHOST) and not training:
            return Normalize.RUNNING
        return self.normalize

    def uses_batch_stats(self, training: bool) -> bool:
        """Whether the output depends on the batch's statistics in this phase."""
        mode = self.stats_in(training)
        if mode is Normalize.PRIOR:
            return self.prior_strength < math.inf
        return mode is not Normalize.RUNNING

    def updates(self, training: bool, layer_momentum: float | str | None = "") -> bool:
        """Whether the running statistics change on a forward in this phase.

        ``layer_momentum`` is the layer's own ``momentum``, which an EMA without a named momentum
        uses: 0 means no update (PyTorch's convention).
        """
        if self.update is Update.NEVER or not self.update_in.includes(training):
            return False
        own = self.update is Update.EMA and self.momentum is None
        return not (own and not isinstance(layer_momentum, str) and layer_momentum == 0)

    @property
    def needs_running_stats(self) -> bool:
        """Whether the layer must hold running statistics for this policy."""
        return self.normalize is not Normalize.BATCH or self.update is not Update.NEVER

    def describe(self, training: bool, layer_momentum: float | str | None = "") -> str:
        """One line saying what a layer with this policy does in the given phase.

        ``layer_momentum`` is the layer's own ``momentum``, shown when the policy names none
        (a layer's ``None`` is a cumulative average); by default the text says "the layer's".
        """
        stats = _STATS_TEXT[self.stats_in(training)].format(p=self)
        momentum = self.momentum if self.momentum is not None else layer_momentum
        if not self.updates(training, layer_momentum):
            upd = "no update"
        elif self.update is Update.CUMULATIVE or momentum is None:
            upd = "cumulative update"
        elif isinstance(momentum, str):
            upd = "EMA update (the layer's momentum)"
        else:
            upd = f"EMA update (momentum {momentum:g})"
        aff = "gamma/beta frozen" if self.affine is Affine.FROZEN else "gamma/beta trainable"
        return f"normalize with {stats}, {upd}, {aff}"

    def __str__(self) -> str:
        train, evaluate = self.describe(True), self.describe(False)
        if train == evaluate:
            return f"{train} (train and eval)"
        return f"train: {train}; eval: {evaluate}"

    def __repr__(self) -> str:
        found = nearest_preset(self)
        if found is not None:
            name, changes = found
            extra = "".join(f", {k}={_show(v)}" for k, v in changes.items())
            return f"bnkit.preset({name!r}{extra})"
        fields = ", ".join(f"{k}={_show(v)}" for k, v in self.settings().items())
        return f"bnkit.Policy({fields})"

    def settings(self) -> dict[str, object]:
        """The settings that matter for this policy, as plain values (the rest are defaults)."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            shown = f.name in AXES or value != f.default
            if f.name == "update_in":
                shown = self.update is not Update.NEVER
            if shown:
                out[f.name] = value.value if isinstance(value, enum.Enum) else value
        return out

    def replace(self, **changes: Any) -> Policy:
        """A copy with some settings changed (validated like the constructor)."""
        unknown = sorted(set(changes) - set(_DEFAULTS))
        if unknown:
            raise PolicyError(
                f"unknown policy setting {unknown[0]!r}; settings: {', '.join(sorted(_DEFAULTS))}"
            )
        return dataclasses.replace(self, **changes)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Policy)}
_STATS_TEXT = {
    Normalize.BATCH: "batch stats",
    Normalize.RUNNING: "running stats",
    Normalize.RENORM: "renormalized batch stats (r_max {p.r_max:g}, d_max {p.d_max:g})",
    Normalize.GHOST: "ghost-batch stats ({p.ghost_size} per ghost)",
    Normalize.PRIOR: "running stats mixed with batch stats (prior N={p.prior_strength:g})",
}
_WANT = {
    "r_max": "a finite float >= 1",
    "d_max": "a finite float >= 0",
    "renorm_warmup": "an int >= 0",
    "renorm_ramp": "an int >= 0",
    "ghost_size": "an int >= 1",
    "prior_strength": "a float >= 0 (math.inf allowed)",
}


class PresetInfo(NamedTuple):
    """A registered preset: its name, its policy, and the peer behaviour it reproduces."""

    name: str
    policy: Policy
    same_as: str
    summary: str


REGISTRY: dict[str, PresetInfo] = {}
"""Named policies, in registration order (filled by :mod:`bnkit.policy.registry`)."""


def nearest_preset(policy: Policy) -> tuple[str, dict[str, Any]] | None:
    """The preset equal to ``policy``, or sharing all its axes (returns the changed settings)."""
    for info in REGISTRY.values():
        if info.policy == policy:
            return info.name, {}
    for info in REGISTRY.values():
        if all(getattr(info.policy, axis) == getattr(policy, axis) for axis in AXES):
            changes = {
                name: getattr(policy, name)
                for name in _DEFAULTS
                if name not in AXES and getattr(policy, name) != getattr(info.policy, name)
            }
            return info.name, changes
    return None


def _coerce(field: str, axis: type[enum.Enum], value: object) -> enum.Enum:
    if isinstance(value, axis):
        return value
    try:
        return axis(value)
    except ValueError:
        known = ", ".join(repr(m.value) for m in axis)
        raise PolicyError(
            f"policy setting {field!r} must be one of {known} (got {value!r})"
        ) from None


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _show(value: object) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "math.inf"
    return repr(value.value if isinstance(value, enum.Enum) else value)
