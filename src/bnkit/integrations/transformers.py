"""A transformers ``TrainerCallback`` that holds a BatchNorm policy through ``Trainer.train``.

The ``Trainer`` calls ``model.train()`` at every training step and ``model.eval()`` for every
evaluation, which undoes ``bn.eval()`` set by hand; a bnkit policy decides by itself what each
phase does, so it survives. :class:`BatchNormPolicyCallback` applies one at train begin, adds
the numbers of a :func:`bnkit.watch` over each logging interval to the ``logs`` the Trainer
reports (names in :mod:`bnkit.integrations._session`), and at train end optionally
recalibrates on a given loader and restores the layers.

The Trainer hands ``logs`` to its callbacks in order, and puts the reporting integrations
(``report_to``: TensorBoard, W&B ...) before the callbacks given to it; register the callback
with :meth:`BatchNormPolicyCallback.attach` to have them report the numbers too. Importing this
module imports transformers; ``import bnkit`` never does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from bnkit.errors import LayerError, MissingDependencyError
from bnkit.integrations._session import Session
from bnkit.layers.select import Where
from bnkit.policy import Policy

if TYPE_CHECKING:
    from transformers import (
        Trainer,
        TrainerCallback,
        TrainerControl,
        TrainerState,
        TrainingArguments,
    )
else:
    try:
        from transformers import (
            Trainer,
            TrainerCallback,
            TrainerControl,
            TrainerState,
            TrainingArguments,
        )
    except ImportError as err:
        raise MissingDependencyError(
            f"bnkit.integrations.transformers needs transformers, which is not installed "
            f"({err}); install it: pip install transformers"
        ) from None

__all__ = ["BatchNormPolicyCallback"]


class BatchNormPolicyCallback(TrainerCallback):
    """Apply a BatchNorm policy for the whole training, log what the layers do, finish cleanly.

    Args:
        policy: a :class:`~bnkit.Policy` or preset name (``"frozen"`` ...); None only watches.
        where: which layers take the policy (a name glob, a type, or ``predicate(name,
            layer)``); all if None.
        recalibrate: data to recalibrate the running statistics on at train end (a DataLoader
            or any iterable of batches; dicts are passed as keyword arguments), with the
            policy still in place; None: no recalibration.
        num_batches: at most this many batches of ``recalibrate``.
        restore: at train end, give the layers back the behaviour they had before; by default
            the policy stays.
        log: add the watch numbers to the Trainer's training ``logs``.
        per_layer: add each layer's numbers too (``bnkit/<layer>/<quantity>``).

    Examples:
        >>> from bnkit.integrations.transformers import BatchNormPolicyCallback
        >>> callback = BatchNormPolicyCallback("frozen", where="backbone")
        >>> # trainer = Trainer(model, args, ...); callback.attach(trainer); trainer.train()
    """

    def __init__(
        self,
        policy: Policy | str | None,
        where: Where = None,
        *,
        recalibrate: Iterable[Any] | None = None,
        num_batches: int | None = None,
        restore: bool = False,
        log: bool = True,
        per_layer: bool = False,
    ) -> None:
        self.session = Session(
            policy,
            where,
            recalibrate=recalibrate,
            num_batches=num_batches,
            restore=restore,
            per_layer=per_layer,
        )
        self.log_numbers = log
        self._logged_step = 0

    def attach(self, trainer: Trainer) -> BatchNormPolicyCallback:
        """Register with ``trainer`` ahead of its other callbacks, so that the reporting
        integrations (``report_to``) log the numbers this callback adds to ``logs``."""
        handler = trainer.callback_handler
        handler.callbacks[:] = [cb for cb in handler.callbacks if cb is not self]
        handler.callbacks.insert(0, self)
        return self

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        """Apply the policy."""
        if model is None:
            raise LayerError(
                "the Trainer passed no model to on_train_begin, so there is no layer to give "
                "the policy to"
            )
        self.session.begin(model)
        self._logged_step = state.global_step

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        """Add the numbers of the steps since the last training log to ``logs``."""
        steps = state.global_step - self._logged_step
        if not self.log_numbers or logs is None or steps <= 0:
            return  # an evaluation's or the final summary's logs: no training step since
        numbers = self.session.measure(steps)
        self._logged_step = state.global_step
        logs.update(numbers)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(numbers)  # the Trainer stored a copy of logs

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        """Recalibrate if asked, then restore the layers if asked."""
        self.session.end()
