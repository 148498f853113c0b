"""The axes of a policy: small enums, one per independent decision of a BatchNorm layer."""

from __future__ import annotations

import enum

__all__ = ["AXES", "DEFAULT_EPS", "DEFAULT_MOMENTUM", "Affine", "Normalize", "Phase", "Update"]

DEFAULT_MOMENTUM = 0.1
"""PyTorch's default ``momentum`` (weight of the new batch in the running average)."""

DEFAULT_EPS = 1e-5
"""PyTorch's default ``eps`` (added to the variance before the square root)."""


class _Axis(str, enum.Enum):
    """An axis value: a string enum that reprs as ``Normalize.RUNNING``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


class Normalize(_Axis):
    """Which statistics normalize the input (formulas in :mod:`bnkit.functional`)."""

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
    """Ghost batches of about ``ghost_size`` samples in ``train()``, running statistics in
    ``eval()``."""
    PRIOR = "prior"
    """Running statistics mixed with the batch's, weight ``N/(N+n)``, in both phases."""


class Update(_Axis):
    """How the running statistics change on a forward."""

    EMA = "ema"
    """Exponential moving average with factor ``momentum`` (the layer's own unless the policy
    names one)."""
    CUMULATIVE = "cumulative"
    """Equal weight per batch: factor ``1/k`` on the k-th update (PyTorch's ``momentum=None``)."""
    NEVER = "never"
    """The running statistics and ``num_batches_tracked`` never change."""


class Phase(_Axis):
    """In which phase (``module.training``) the running statistics update."""

    TRAIN = "train"
    """Only in ``train()``, as ``nn.BatchNorm``."""
    EVAL = "eval"
    """Only in ``eval()`` (e.g. streaming adaptation at test time, frozen during training)."""
    ALWAYS = "always"
    """In both phases."""

    def includes(self, training: bool) -> bool:
        """Whether this phase covers ``module.training == training``."""
        return self is Phase.ALWAYS or (self is Phase.TRAIN) == training


class Affine(_Axis):
    """Whether gamma (``weight``) and beta (``bias``) train."""

    TRAINABLE = "trainable"
    """Gradients flow to gamma/beta (``requires_grad=True``)."""
    FROZEN = "frozen"
    """gamma/beta get no gradient, whatever their ``requires_grad`` says later."""


AXES: dict[str, type[_Axis]] = {
    "normalize": Normalize,
    "update": Update,
    "update_in": Phase,
    "affine": Affine,
}
"""The policy fields that are axes, with their enums."""
