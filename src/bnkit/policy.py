r"""The BatchNorm policy: three independent axes, one immutable value.

For each channel :math:`c`, with :math:`n` values per channel in the batch (``N·H·W`` for a
4D input), BatchNorm computes

.. math::

    \mu_B = \frac{1}{n}\sum_i x_i, \qquad
    \sigma^2_B = \frac{1}{n}\sum_i (x_i - \mu_B)^2 \quad\text{(biased)}

    y_i = \frac{x_i - \mu}{\sqrt{\sigma^2 + \epsilon}}\,\gamma + \beta

where :math:`(\mu, \sigma^2)` are either the batch statistics :math:`(\mu_B, \sigma^2_B)` or the
running statistics (``running_mean``, ``running_var``). A running-statistics update with factor
:math:`f` is

.. math::

    \hat\mu \leftarrow (1 - f)\,\hat\mu + f\,\mu_B, \qquad
    \hat\sigma^2 \leftarrow (1 - f)\,\hat\sigma^2 + f\,\sigma^2_B\,\frac{n}{n - 1}

so ``running_var`` stores the *unbiased* variance while normalization uses the biased one, as in
``torch.nn.BatchNorm``. The factor is ``momentum`` for :attr:`Update.EMA` (PyTorch's convention:
the weight of the new batch, so 0.1 in PyTorch is 0.9 in Keras) and :math:`1/k` on the
:math:`k`-th update for :attr:`Update.CUMULATIVE`.

A :class:`Policy` chooses, independently:

* :class:`Normalize` — which statistics play :math:`(\mu, \sigma^2)`;
* :class:`Update` and :class:`Phase` — how and when the running statistics change;
* :class:`Affine` — whether :math:`\gamma, \beta` train.

Three more ways to normalize extend the first axis:

* **Batch renormalization** (Ioffe 2017) corrects the batch statistics toward the running ones,

  .. math::

      r = \operatorname{clip}_{[1/r_{max},\, r_{max}]}\frac{\sigma_B}{\hat\sigma}, \quad
      d = \operatorname{clip}_{[-d_{max},\, d_{max}]}\frac{\mu_B - \hat\mu}{\hat\sigma}, \quad
      y = \Big(\frac{x - \mu_B}{\sigma_B}\, r + d\Big)\gamma + \beta

  with :math:`\sigma = \sqrt{\sigma^2 + \epsilon}` and no gradient through :math:`r, d`;
  :math:`r_{max} = 1, d_{max} = 0` is plain BatchNorm. The limits can start at (1, 0) for
  ``renorm_warmup`` updates and rise linearly to (``r_max``, ``d_max``) over ``renorm_ramp``.
* **Ghost batches** normalize each consecutive group of ``ghost_size`` samples with its own
  statistics. The running statistics update once per forward, with the size-weighted mean of the
  groups' means and of their unbiased variances (Keras's virtual batches): the variance inference
  uses is then the within-group variance that training normalized with, and ``momentum`` keeps
  its per-step meaning whatever the batch size.
* **Prior mixing** (Schneider et al. 2020) normalizes with
  :math:`\mu = w\hat\mu + (1-w)\mu_B,\ \sigma^2 = w\hat\sigma^2 + (1-w)\sigma^2_B` where
  :math:`w = N/(N + n)` for a prior strength :math:`N` and a batch of :math:`n` samples
  (``x.shape[0]``): :math:`N = 0` is batch statistics, :math:`N = \infty` running statistics.
  Gradients flow through the batch part.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from typing import Any

from bnkit.errors import PolicyError

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_MOMENTUM",
    "Affine",
    "Normalize",
    "Phase",
    "Policy",
    "Update",
]

DEFAULT_MOMENTUM = 0.1
"""PyTorch's default ``momentum`` (weight of the new batch in the running average)."""

DEFAULT_EPS = 1e-5
"""PyTorch's default ``eps`` (added to the variance before the square root)."""


class Normalize(str, enum.Enum):
    """Which statistics normalize the input."""

    PHASE = "phase"
    """Batch statistics in ``train()``, running statistics in ``eval()`` (``nn.BatchNorm``)."""
    BATCH = "batch"
    """Batch statistics in both phases (``track_running_stats=False``; TENT)."""
    RUNNING = "running"
    """Running statistics in both phases; the output never depends on the rest of the batch.

    When the running statistics also update on the forward, the input is normalized with their
    values from before that update."""
    RENORM = "renorm"
    """Batch renormalization in ``train()``, running statistics in ``eval()``."""
    GHOST = "ghost"
    """Ghost batches of ``ghost_size`` samples in ``train()``, running statistics in ``eval()``."""
    PRIOR = "prior"
    """Running statistics mixed with the batch's, weight ``N/(N+n)``, in both phases."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


class Update(str, enum.Enum):
    """How the running statistics change on a forward (see the module docstring for ``f``)."""

    EMA = "ema"
    """Exponential moving average with factor ``momentum``."""
    CUMULATIVE = "cumulative"
    """Equal weight per batch: factor ``1/k`` (PyTorch's ``momentum=None``)."""
    NEVER = "never"
    """The running statistics and ``num_batches_tracked`` never change."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


class Phase(str, enum.Enum):
    """In which phase (``module.training``) the running statistics update."""

    TRAIN = "train"
    """Only in ``train()``, as ``nn.BatchNorm``."""
    EVAL = "eval"
    """Only in ``eval()`` (e.g. streaming adaptation at test time, frozen during training)."""
    ALWAYS = "always"
    """In both phases."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"

    def includes(self, training: bool) -> bool:
        """Whether this phase covers ``module.training == training``."""
        return self is Phase.ALWAYS or (self is Phase.TRAIN) == training


class Affine(str, enum.Enum):
    """Whether gamma (``weight``) and beta (``bias``) train."""

    TRAINABLE = "trainable"
    """Gradients flow to gamma/beta (``requires_grad=True``)."""
    FROZEN = "frozen"
    """gamma/beta get no gradient, whatever their ``requires_grad`` says later."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


_AXES: dict[str, type[enum.Enum]] = {
    "normalize": Normalize,
    "update": Update,
    "update_in": Phase,
    "affine": Affine,
}


def _coerce(field: str, value: object) -> enum.Enum:
    axis = _AXES[field]
    if isinstance(value, axis):
        return value
    try:
        return axis(value)
    except ValueError:
        known = ", ".join(repr(m.value) for m in axis)
        raise PolicyError(
            f"policy setting {field!r} must be one of {known} (got {value!r})"
        ) from None


@dataclasses.dataclass(frozen=True)
class Policy:
    """How one BatchNorm layer behaves, whatever ``train()``/``eval()`` is called.

    Strings are accepted for every axis (``Policy(normalize="running")``). A setting that only
    applies to another choice (``momentum`` without ``update="ema"``, ``update_in`` with
    ``update="never"``) must keep its default, so two policies that behave the same are equal.

    Args:
        normalize: which statistics normalize the input.
        update: how the running statistics change.
        momentum: weight of the new batch for ``update="ema"``, in (0, 1].
        update_in: in which phase the running statistics update.
        affine: whether gamma/beta train.
        r_max: ``normalize="renorm"``: largest correction of the scale, at least 1.
        d_max: ``normalize="renorm"``: largest correction of the shift, at least 0.
        renorm_warmup: ``normalize="renorm"``: updates with limits (1, 0) before the ramp.
        renorm_ramp: ``normalize="renorm"``: updates over which the limits rise linearly.
        ghost_size: ``normalize="ghost"``: samples per ghost batch.
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
    momentum: float = DEFAULT_MOMENTUM
    update_in: Phase = Phase.TRAIN
    affine: Affine = Affine.TRAINABLE
    r_max: float = 3.0
    d_max: float = 5.0
    renorm_warmup: int = 0
    renorm_ramp: int = 0
    ghost_size: int = 16
    prior_strength: float = 16.0

    def __post_init__(self) -> None:
        for field in _AXES:
            object.__setattr__(self, field, _coerce(field, getattr(self, field)))
        self._validate()

    def _validate(self) -> None:
        m = self.momentum
        if isinstance(m, bool) or not isinstance(m, (int, float)):
            raise PolicyError(f"momentum must be a float in (0, 1] (got {m!r})")
        object.__setattr__(self, "momentum", float(m))
        if self.update is Update.EMA:
            if not 0.0 < m <= 1.0:
                hint = (
                    "; a momentum of 0 means 'never update', say so with update='never'"
                    if m == 0
                    else ""
                )
                raise PolicyError(f"momentum must be in (0, 1] for update='ema' (got {m}){hint}")
        elif m != DEFAULT_MOMENTUM:
            raise PolicyError(
                f"momentum only applies to update='ema' (got update={self.update.value!r}, "
                f"momentum={m}); drop momentum or use update='ema'"
            )
        if self.update is Update.NEVER and self.update_in is not Phase.TRAIN:
            raise PolicyError(
                f"update_in only applies when the running statistics update (got "
                f"update='never', update_in={self.update_in.value!r}); drop update_in"
            )
        self._validate_strategy()

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
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name, mode, ok in limits:
            value = getattr(self, name)
            if not ok:
                raise PolicyError(f"{name} must be {_WANT[name]} (got {value!r})")
            if self.normalize is not mode and value != defaults[name]:
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

    def updates(self, training: bool) -> bool:
        """Whether the running statistics change on a forward in this phase."""
        return self.update is not Update.NEVER and self.update_in.includes(training)

    @property
    def needs_running_stats(self) -> bool:
        """Whether the layer must hold running statistics for this policy."""
        return self.normalize is not Normalize.BATCH or self.update is not Update.NEVER

    def describe(self, training: bool) -> str:
        """One line saying what a layer with this policy does in the given phase."""
        stats = _STATS_TEXT[self.stats_in(training)].format(p=self)
        if not self.updates(training):
            upd = "no update"
        elif self.update is Update.EMA:
            upd = f"EMA update (momentum {self.momentum:g})"
        else:
            upd = "cumulative update"
        aff = "gamma/beta frozen" if self.affine is Affine.FROZEN else "gamma/beta trainable"
        return f"normalize with {stats}, {upd}, {aff}"

    def __str__(self) -> str:
        train, evaluate = self.describe(True), self.describe(False)
        if train == evaluate:
            return f"{train} (train and eval)"
        return f"train: {train}; eval: {evaluate}"

    def __repr__(self) -> str:
        from bnkit.presets import nearest_preset

        found = nearest_preset(self)
        if found is not None:
            name, changes = found
            extra = "".join(f", {k}={_show(v)}" for k, v in changes.items())
            return f"bnkit.preset({name!r}{extra})"
        fields = ", ".join(f"{k}={_show(v)}" for k, v in self._settings().items())
        return f"bnkit.Policy({fields})"

    def _settings(self) -> dict[str, object]:
        """The settings that matter for this policy (the others are at their defaults)."""
        out: dict[str, object] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            relevant = f.name in _AXES or value != f.default
            if f.name == "momentum":
                relevant = self.update is Update.EMA
            elif f.name == "update_in":
                relevant = self.update is not Update.NEVER
            if relevant:
                out[f.name] = _plain(value)
        return out

    def replace(self, **changes: Any) -> Policy:
        """A copy with some settings changed (validated like the constructor)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise PolicyError(
                f"unknown policy setting {unknown[0]!r}; settings: {', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **changes)


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


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _show(value: object) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "math.inf"
    return repr(value)


def _plain(value: object) -> object:
    return value.value if isinstance(value, enum.Enum) else value
