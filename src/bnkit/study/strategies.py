"""What each strategy does, in bnkit calls: one registry per protocol.

**Test-time adaptation** (no target labels). A strategy gets a copy of the pretrained source
model and the unlabelled data, and returns the logits for the test stream, which it sees batch by
batch in stream order (so strategies that depend on the batch, or learn along the stream, see
exactly what a deployed model would).

**Few-shot fine-tuning** (``k`` target labels per class). A strategy gets a copy of the source
model, prepares its BatchNorm layers and trainable parameters, and trains it for the same number
of SGD steps as every other strategy; the model is then scored in ``eval()`` mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn as nn
from torch import Tensor

import bnkit
from bnkit.layers.select import bn_layers
from bnkit.study.training import fit, only_bn_affine, predict

__all__ = ["FINETUNE", "TEST_TIME", "FineTuneContext", "Strategy", "StreamContext"]


@dataclasses.dataclass(frozen=True)
class StreamContext:
    """Inputs of a test-time strategy (tensors on the model's device)."""

    pool: Tensor
    stream: Tensor
    batch_size: int
    n: int | None
    prior_strength: float
    adapt_momentum: float
    tent_lr: float
    stress_lr: float
    stress_passes: int


@dataclasses.dataclass(frozen=True)
class FineTuneContext:
    """Inputs of a fine-tuning strategy (tensors on the model's device)."""

    x: Tensor
    y: Tensor
    pool: Tensor
    batch_size: int
    steps: int
    lr: float
    ghost_size: int
    generator: torch.Generator


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A named strategy: what it does (one line, in bnkit terms) and the function doing it."""

    name: str
    summary: str
    fn: Callable[..., object]


# --------------------------------------------------------------------------- test time
def _per_batch(model: nn.Module, ctx: StreamContext, call: Callable[[Tensor], Tensor]) -> Tensor:
    size = ctx.batch_size
    with torch.no_grad():
        return torch.cat(
            [call(ctx.stream[i : i + size]).float().cpu() for i in range(0, len(ctx.stream), size)]
        )


def _source(model: nn.Module, ctx: StreamContext) -> Tensor:
    if any(True for _ in bn_layers(model)):
        bnkit.apply(model, "frozen")
    return predict(model.eval(), ctx.stream)


def _adabn(model: nn.Module, ctx: StreamContext) -> Tensor:
    pool = ctx.pool if ctx.n is None else ctx.pool[: ctx.n]
    bnkit.recalibrate(model, torch.split(pool, 64), estimator="population", progress=False)
    return predict(model.eval(), ctx.stream)


def _with_policy(policy: Callable[[StreamContext], bnkit.Policy]) -> Callable[..., Tensor]:
    def run(model: nn.Module, ctx: StreamContext) -> Tensor:
        bnkit.apply(model, policy(ctx))
        model.eval()
        return _per_batch(model, ctx, model)

    return run


def _tent(stress: bool) -> Callable[..., Tensor]:
    def run(model: nn.Module, ctx: StreamContext) -> Tensor:
        model.eval()
        lr, passes = (ctx.stress_lr, ctx.stress_passes) if stress else (ctx.tent_lr, 1)
        with bnkit.tent(model, lr=lr, steps=1, episodic=False) as adapt:
            for _ in range(passes - 1):
                _per_batch(model, ctx, adapt)
            return _per_batch(model, ctx, adapt)

    return run


TEST_TIME: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("source", "bnkit.apply(model, 'frozen'): source running statistics", _source),
        Strategy(
            "adabn",
            "bnkit.recalibrate(model, first n target-pool images) (population estimator)",
            _adabn,
        ),
        Strategy(
            "test_batch",
            "bnkit.apply(model, 'batch_stats'): each test batch normalized by its own statistics",
            _with_policy(lambda ctx: bnkit.preset("batch_stats")),
        ),
        Strategy(
            "prior",
            "bnkit.apply(model, preset('prior', prior_strength=N)): source statistics as a prior",
            _with_policy(lambda ctx: bnkit.preset("prior", prior_strength=ctx.prior_strength)),
        ),
        Strategy(
            "adapt",
            "bnkit.apply(model, preset('adapt', momentum=m, update_in='always')): running "
            "statistics that follow the stream",
            _with_policy(
                lambda ctx: bnkit.preset("adapt", momentum=ctx.adapt_momentum, update_in="always")
            ),
        ),
        Strategy("tent", "bnkit.tent(model, lr): one entropy step per test batch", _tent(False)),
        Strategy(
            "tent_stress",
            "bnkit.tent(model, high lr), several passes over the stream (scored on the last)",
            _tent(True),
        ),
    )
}
"""Test-time strategies by name."""


# --------------------------------------------------------------------------- fine-tuning
def _train(
    model: nn.Module, ctx: FineTuneContext, params: list[nn.Parameter] | None = None
) -> None:
    fit(
        model,
        ctx.x,
        ctx.y,
        steps=ctx.steps,
        batch_size=ctx.batch_size,
        lr=ctx.lr,
        generator=ctx.generator,
        params=params,
    )


def _finetune_with(policy: str | None) -> Callable[..., None]:
    def run(model: nn.Module, ctx: FineTuneContext) -> None:
        if policy is not None:
            bnkit.apply(model, policy)
        _train(model, ctx)

    return run


def _bn_only(model: nn.Module, ctx: FineTuneContext) -> None:
    _train(model, ctx, only_bn_affine(model))


def _adabn_finetune(model: nn.Module, ctx: FineTuneContext) -> None:
    bnkit.recalibrate(model, torch.split(ctx.pool, 64), estimator="population", progress=False)
    bnkit.apply(model, "frozen_stats")
    _train(model, ctx)


def _ghost(model: nn.Module, ctx: FineTuneContext) -> None:
    bnkit.apply(model, bnkit.preset("ghost", ghost_size=ctx.ghost_size))
    _train(model, ctx)


FINETUNE: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("pytorch", "plain nn.BatchNorm: batch statistics, EMA 0.1", _finetune_with(None)),
        Strategy(
            "frozen_affine",
            "bnkit.apply(model, 'frozen_affine'): gamma/beta fixed, statistics as PyTorch",
            _finetune_with("frozen_affine"),
        ),
        Strategy(
            "frozen_stats",
            "bnkit.apply(model, 'frozen_stats'): source statistics kept, gamma/beta train",
            _finetune_with("frozen_stats"),
        ),
        Strategy(
            "frozen",
            "bnkit.apply(model, 'frozen'): BatchNorm a fixed affine map",
            _finetune_with("frozen"),
        ),
        Strategy(
            "bn_only",
            "only gamma/beta train (requires_grad), statistics as PyTorch",
            _bn_only,
        ),
        Strategy(
            "adabn_finetune",
            "bnkit.recalibrate(model, target pool), then fine-tune with 'frozen_stats'",
            _adabn_finetune,
        ),
        Strategy(
            "renorm",
            "bnkit.apply(model, 'renorm'): batch renormalization (r_max 3, d_max 5)",
            _finetune_with("renorm"),
        ),
        Strategy(
            "ghost",
            "bnkit.apply(model, preset('ghost', ghost_size=g)): ghost batches",
            _ghost,
        ),
    )
}
"""Fine-tuning strategies by name (for the GroupNorm twin only ``pytorch`` applies)."""
