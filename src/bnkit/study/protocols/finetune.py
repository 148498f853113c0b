"""Protocol 2, few-shot fine-tuning with ``k`` target labels per class, in bnkit calls.

A strategy gets a copy of the source model and prepares its BatchNorm layers and trainable
parameters; then every strategy trains the same way (:func:`finetune`): ``steps`` SGD steps
with momentum 0.9, linear warmup, cosine decay, at one learning rate of the declared sweep.
The accuracy on the labelled target validation split is recorded along the way (the learning
curve) and at the end; the study chooses each strategy's learning rate on it, never on the test
set. The model is scored in ``eval()`` mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn as nn
from torch import Tensor

import bnkit
from bnkit.study.data.feed import Images, in_batches
from bnkit.study.models.scores import accuracy
from bnkit.study.models.training import fit, only_bn_affine, predict
from bnkit.study.protocols.test_time import Strategy

__all__ = ["FINETUNE", "FineTuneContext", "finetune"]


@dataclasses.dataclass(frozen=True)
class FineTuneContext:
    """Inputs of a fine-tuning run (images as tensors on the model's device or streamed
    files; labels of val on CPU); ``eval_batch_size`` is the prediction batch,
    ``stats_batch_size`` the batch of the statistics pass over the pool."""

    x: Images
    y: Tensor
    pool: Images
    val_x: Images
    val_y: Tensor
    batch_size: int
    steps: int
    warmup: int
    lr: float
    curve_points: int
    ghost_size: int
    generator: torch.Generator
    eval_batch_size: int = 512
    stats_batch_size: int = 64


Prepare = Callable[[nn.Module, FineTuneContext], "list[nn.Parameter] | None"]


def _policy(name: str | None) -> Prepare:
    def prepare(model: nn.Module, ctx: FineTuneContext) -> list[nn.Parameter] | None:
        if name is not None:
            bnkit.apply(model, name)
        return None

    return prepare


def _bn_only(model: nn.Module, ctx: FineTuneContext) -> list[nn.Parameter] | None:
    return only_bn_affine(model)


def _adabn_finetune(model: nn.Module, ctx: FineTuneContext) -> list[nn.Parameter] | None:
    batches = in_batches(ctx.pool, ctx.stats_batch_size)
    bnkit.recalibrate(model, batches, estimator="population", progress=False)
    bnkit.apply(model, "frozen_stats")
    return None


def _ghost(model: nn.Module, ctx: FineTuneContext) -> list[nn.Parameter] | None:
    bnkit.apply(model, bnkit.preset("ghost", ghost_size=ctx.ghost_size))
    return None


FINETUNE: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("pytorch", "plain nn.BatchNorm: batch statistics, EMA 0.1", _policy(None)),
        Strategy(
            "frozen_affine",
            "bnkit.apply(model, 'frozen_affine'): gamma/beta fixed, statistics as PyTorch",
            _policy("frozen_affine"),
        ),
        Strategy(
            "frozen_stats",
            "bnkit.apply(model, 'frozen_stats'): source statistics kept, gamma/beta train",
            _policy("frozen_stats"),
        ),
        Strategy(
            "frozen",
            "bnkit.apply(model, 'frozen'): BatchNorm a fixed affine map",
            _policy("frozen"),
        ),
        Strategy(
            "bn_only", "only gamma/beta train (requires_grad), statistics as PyTorch", _bn_only
        ),
        Strategy(
            "adabn_finetune",
            "bnkit.recalibrate(model, target pool), then fine-tune with 'frozen_stats'",
            _adabn_finetune,
        ),
        Strategy(
            "renorm",
            "bnkit.apply(model, 'renorm'): batch renormalization (r_max 3, d_max 5)",
            _policy("renorm"),
        ),
        Strategy(
            "ghost", "bnkit.apply(model, preset('ghost', ghost_size=g)): ghost batches", _ghost
        ),
    )
}
"""Fine-tuning strategies by name (for the GroupNorm twin only ``pytorch`` applies)."""


def finetune(model: nn.Module, strategy: str, ctx: FineTuneContext) -> list[float]:
    """Prepare ``model`` with ``strategy``, train it, and return its learning curve: the
    validation accuracy before training and at ``curve_points - 1`` evenly spaced steps."""

    def val_accuracy() -> float:
        return accuracy(predict(model, ctx.val_x, ctx.eval_batch_size), ctx.val_y)

    params = FINETUNE[strategy].fn(model, ctx)
    assert params is None or isinstance(params, list)
    curve = [val_accuracy()]
    every = max(1, ctx.steps // (ctx.curve_points - 1))

    def record(step: int) -> bool:
        curve.append(val_accuracy())
        return True

    fit(
        model,
        ctx.x,
        ctx.y,
        steps=ctx.steps,
        batch_size=ctx.batch_size,
        lr=ctx.lr,
        generator=ctx.generator,
        params=params,
        warmup=ctx.warmup,
        schedule="cosine",
        every=every,
        on_eval=record,
    )
    if ctx.steps % every:
        curve.append(val_accuracy())
    return curve
