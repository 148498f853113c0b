"""A Lightning callback that holds a BatchNorm policy through ``Trainer.fit``.

Lightning calls ``model.train()`` at the start of every training epoch and after every
validation loop, which undoes ``bn.eval()`` set by hand; a bnkit policy decides by itself what
each phase does, so it survives. :class:`BatchNormPolicy` applies one at fit start, logs the
numbers of a :func:`bnkit.watch` with ``pl_module.log_dict`` after every training batch (the
trainer's loggers receive them every ``log_every_n_steps``; names in
:mod:`bnkit.integrations._session`), and at fit end optionally recalibrates on a given loader
and restores the layers.

Importing this module imports Lightning (``lightning.pytorch``, or the standalone
``pytorch_lightning``); ``import bnkit`` never does.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from bnkit.errors import MissingDependencyError
from bnkit.integrations._session import Session
from bnkit.layers.select import Where
from bnkit.policy import Policy

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch import Callback
else:
    try:
        import lightning.pytorch as pl
        from lightning.pytorch import Callback
    except ImportError:
        try:
            import pytorch_lightning as pl
            from pytorch_lightning import Callback
        except ImportError as err:
            raise MissingDependencyError(
                f"bnkit.integrations.lightning needs Lightning, which is not installed ({err}); "
                "install it: pip install lightning"
            ) from None

__all__ = ["BatchNormPolicy"]


class BatchNormPolicy(Callback):
    """Apply a BatchNorm policy for the whole fit, log what the layers do, finish cleanly.

    Args:
        policy: a :class:`~bnkit.Policy` or preset name (``"frozen"`` ...); None only watches.
        where: which layers take the policy (a name glob, a type, or ``predicate(name,
            layer)``); all if None.
        recalibrate: data to recalibrate the running statistics on at fit end (a DataLoader
            or any iterable of batches, as :func:`bnkit.recalibrate` takes), with the policy
            still in place, so layers it freezes stay as they are; None: no recalibration.
        num_batches: at most this many batches of ``recalibrate``.
        restore: at fit end (and when the fit fails), give the layers back the behaviour they
            had before the fit; by default the policy stays.
        log: log the watch numbers with ``pl_module.log_dict`` after every training batch.
        per_layer: log each layer's numbers too (``bnkit/<layer>/<quantity>``).

    Examples:
        >>> from bnkit.integrations.lightning import BatchNormPolicy
        >>> callback = BatchNormPolicy("frozen", where="backbone")
        >>> # trainer = lightning.pytorch.Trainer(callbacks=[callback]); trainer.fit(model, data)
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
        super().__init__()
        self.session = Session(
            policy,
            where,
            recalibrate=recalibrate,
            num_batches=num_batches,
            restore=restore,
            per_layer=per_layer,
        )
        self.log_numbers = log

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """At the start of ``fit`` (before the optimizers are built): apply the policy."""
        if stage == "fit":
            self.session.begin(pl_module)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """Log what the layers did in this batch."""
        if self.log_numbers:
            numbers = self.session.measure(steps=1)
            if numbers:
                pl_module.log_dict(numbers, on_step=True, on_epoch=False)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Recalibrate if asked, then restore the layers if asked."""
        self.session.end()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """A failed fit: restore the layers if asked (no recalibration)."""
        self.session.abort()
