r"""Test-time adaptation by entropy minimization (TENT, Wang et al. 2021).

On each test batch, BatchNorm layers normalize with the batch's statistics (policy
``batch_stats``) and only their gamma/beta are updated, by one optimizer step on the mean
prediction entropy

.. math::

    H(\hat y) = -\sum_k p_k \log p_k, \qquad p = \operatorname{softmax}(\text{logits}).

Unlike a model put in ``train()``, the rest of the model keeps its mode: dropout stays off.
``episodic=True`` resets the model before every batch (each batch adapted on its own);
``episodic=False`` keeps adapting along the stream (online). :meth:`Tent.reset` puts parameters,
buffers and optimizer state back exactly as they were when adaptation started;
:meth:`Tent.release` gives the layers back their previous policies and every parameter its
previous ``requires_grad``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from bnkit.errors import LayerError, PolicyError
from bnkit.layers.manage import check_manageable, manage
from bnkit.layers.select import Where, targets
from bnkit.layers.surgery import Snapshot, capture, restore
from bnkit.policy import preset

__all__ = ["Tent", "softmax_entropy", "tent"]


def softmax_entropy(logits: Tensor) -> Tensor:
    """Entropy of the softmax of ``logits`` along dim 1, per sample."""
    log_p = logits.log_softmax(dim=1)
    return -(log_p.exp() * log_p).sum(dim=1)


class Tent:
    """Adapt a classifier's BatchNorm gamma/beta to each test batch by entropy minimization.

    Args:
        model: a classifier returning logits (N, K).
        optimizer: an optimizer over the adapted parameters; by default
            ``torch.optim.Adam(params, lr=lr)``. Build it with :meth:`parameters`.
        lr: learning rate of the default optimizer.
        steps: optimizer steps per batch (TENT uses 1; more steps adapt faster and risk
            collapse).
        episodic: reset before every batch instead of adapting along the stream.
        where: which BatchNorm layers adapt; all if None.
        loss: the objective on the logits, by default the mean softmax entropy.

    Raises:
        SelectionError: ``where`` selects no BatchNorm layer.
        LayerError: the selected layers have no gamma/beta to adapt.

    Examples:
        >>> import torch, torch.nn as nn, bnkit
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).eval()
        >>> adapt = bnkit.tent(model, lr=1e-3)
        >>> logits = adapt(torch.randn(16, 4))
        >>> adapt.reset()
        >>> adapt.release()
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        lr: float = 1e-3,
        steps: int = 1,
        episodic: bool = False,
        where: Where = None,
        loss: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise PolicyError(f"steps must be at least 1, an int (got {steps!r})")
        layers = targets(model, where)
        params: list[nn.Parameter] = [
            p
            for _, layer in layers
            for p in (getattr(layer, "weight", None), getattr(layer, "bias", None))
            if isinstance(p, nn.Parameter)
        ]
        if not params:
            raise LayerError(
                "TENT adapts gamma/beta, but the selected BatchNorm layers have none "
                "(built with affine=False); select layers with affine parameters"
            )
        optimizer = _optimizer(optimizer, params, lr)
        batch_stats = preset("batch_stats")
        for name, layer in layers:
            check_manageable(layer, batch_stats, name)
        # Every check has passed: from here on, the model changes (and is put back on failure).
        self.model = model
        self.steps = steps
        self.episodic = episodic
        self.loss = loss or (lambda logits: softmax_entropy(logits).mean())
        self.optimizer = optimizer
        self._params = params
        self._layer_states: list[tuple[nn.Module, Snapshot]] = [
            (layer, capture(layer)) for _, layer in layers
        ]
        self._grad_flags = [(p, p.requires_grad) for p in model.parameters()]
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            for name, layer in layers:
                manage(layer, batch_stats, name)
            self._model_state = copy.deepcopy(model.state_dict())
            self._optimizer_state = copy.deepcopy(self.optimizer.state_dict())
        except BaseException:
            self.release()
            raise

    def parameters(self) -> list[nn.Parameter]:
        """The adapted parameters (gamma and beta of the selected layers)."""
        return list(self._params)

    def __call__(self, x: Any) -> Tensor:
        """Adapt on ``x`` and return the logits of the last forward (before its update)."""
        if self.episodic:
            self.reset()
        logits: Tensor | None = None
        for _ in range(self.steps):
            with torch.enable_grad():
                logits = self.model(x)
                assert logits is not None
                loss: Tensor = self.loss(logits)
                loss.backward()  # type: ignore[no-untyped-call]
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        assert logits is not None
        return logits.detach()

    def reset(self) -> None:
        """Parameters, buffers and optimizer state back to when adaptation started."""
        self.model.load_state_dict(self._model_state, strict=True)
        self.optimizer.load_state_dict(copy.deepcopy(self._optimizer_state))

    def release(self) -> None:
        """The layers' previous policies and every parameter's ``requires_grad`` come back.

        Adapted gamma/beta values stay; call :meth:`reset` first to undo them too.
        """
        for layer, snap in self._layer_states:
            restore(layer, snap)
        for p, flag in self._grad_flags:
            p.requires_grad_(flag)

    def __enter__(self) -> Tent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _optimizer(
    optimizer: torch.optim.Optimizer | None, params: list[nn.Parameter], lr: float
) -> torch.optim.Optimizer:
    """The user's optimizer, checked to hold adapted parameters, or Adam over them."""
    if optimizer is None:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
            raise PolicyError(f"lr must be a positive finite number (got {lr!r})")
        return torch.optim.Adam(params, lr=lr)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise PolicyError(
            f"optimizer must be a torch.optim.Optimizer (got {type(optimizer).__name__}); "
            "build it over the adapted gamma/beta, or leave it out and give lr"
        )
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not held & {id(p) for p in params}:
        raise PolicyError(
            "the optimizer holds none of the adapted parameters (the gamma/beta of the "
            "selected BatchNorm layers); build it over those, e.g. "
            "torch.optim.SGD([p for n, p in model.named_parameters() if ...], lr=...)"
        )
    return optimizer


def tent(model: nn.Module, **kwargs: Any) -> Tent:
    """Start test-time entropy minimization on ``model``; see :class:`Tent` for the options."""
    return Tent(model, **kwargs)
