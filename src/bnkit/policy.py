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
"""

from __future__ import annotations

import dataclasses
import enum
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
    """Running statistics in both phases; the output never depends on the rest of the batch."""

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

    Raises:
        PolicyError: a setting is out of range or does not apply to the other choices.

    Example:
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

    # ------------------------------------------------------------------ behaviour per phase
    def uses_batch_stats(self, training: bool) -> bool:
        """Whether the input is normalized with batch statistics in this phase."""
        if self.normalize is Normalize.PHASE:
            return training
        return self.normalize is Normalize.BATCH

    def updates(self, training: bool) -> bool:
        """Whether the running statistics change on a forward in this phase."""
        return self.update is not Update.NEVER and self.update_in.includes(training)

    @property
    def needs_running_stats(self) -> bool:
        """Whether the layer must hold running statistics for this policy."""
        return self.normalize is not Normalize.BATCH or self.update is not Update.NEVER

    def describe(self, training: bool) -> str:
        """One line saying what a layer with this policy does in the given phase."""
        stats = "batch" if self.uses_batch_stats(training) else "running"
        if not self.updates(training):
            upd = "no update"
        elif self.update is Update.EMA:
            upd = f"EMA update (momentum {self.momentum:g})"
        else:
            upd = "cumulative update"
        aff = "gamma/beta frozen" if self.affine is Affine.FROZEN else "gamma/beta trainable"
        return f"normalize with {stats} stats, {upd}, {aff}"

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
            extra = "".join(f", {k}={v!r}" for k, v in changes.items())
            return f"bnkit.preset({name!r}{extra})"
        fields = ", ".join(
            f"{f.name}={_plain(getattr(self, f.name))!r}" for f in dataclasses.fields(self)
        )
        return f"bnkit.Policy({fields})"

    def replace(self, **changes: Any) -> Policy:
        """A copy with some settings changed (validated like the constructor)."""
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - names)
        if unknown:
            raise PolicyError(
                f"unknown policy setting {unknown[0]!r}; settings: {', '.join(sorted(names))}"
            )
        return dataclasses.replace(self, **changes)


def _plain(value: object) -> object:
    return value.value if isinstance(value, enum.Enum) else value
