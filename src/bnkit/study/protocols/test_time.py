"""Protocol 1, test-time adaptation without labels: what each strategy does, in bnkit calls.

A strategy gets a copy of the pretrained source model and the unlabelled data, and returns the
logits for the test stream, which it sees batch by batch in stream order (so strategies that
depend on the batch, or learn along the stream, see exactly what a deployed model would).
``tent_long`` and ``tent_reset`` get a long stream (the test set again and again) and TENT's
stress learning rate; ``tent_reset`` returns the model to its source state every
``reset_every`` batches (RDumb's periodic reset).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn as nn
from torch import Tensor

import bnkit
from bnkit.study.data.feed import Images, in_batches
from bnkit.study.models.training import predict

__all__ = ["TEST_TIME", "Strategy", "StreamContext"]


@dataclasses.dataclass(frozen=True)
class StreamContext:
    """Inputs of a test-time strategy (tensors on the model's device, or streamed files).

    ``batch_size`` is the test batch of the strategies that depend on it; ``eval_batch_size``
    the prediction batch of those that do not (``source``, ``adabn``); ``stats_batch_size``
    the batch of AdaBN's pass over the pool.
    """

    pool: Images
    stream: Images
    batch_size: int
    n: int | None
    prior_strength: float
    adapt_momentum: float
    tent_lr: float
    reset_every: int
    eval_batch_size: int = 512
    stats_batch_size: int = 64


@dataclasses.dataclass(frozen=True)
class Strategy:
    """A named strategy: what it does (one line, in bnkit terms) and the function doing it."""

    name: str
    summary: str
    fn: Callable[..., object]


def _per_batch(model: nn.Module, ctx: StreamContext, call: Callable[[Tensor], Tensor]) -> Tensor:
    size = ctx.batch_size
    with torch.no_grad():
        return torch.cat([call(xb).float().cpu() for xb in in_batches(ctx.stream, size)])


def _source(model: nn.Module, ctx: StreamContext) -> Tensor:
    if any(True for _ in bnkit.bn_layers(model)):
        bnkit.apply(model, "frozen")
    return predict(model.eval(), ctx.stream, ctx.eval_batch_size)


def _adabn(model: nn.Module, ctx: StreamContext) -> Tensor:
    pool = ctx.pool if ctx.n is None else ctx.pool[: ctx.n]
    batches = in_batches(pool, ctx.stats_batch_size)
    bnkit.recalibrate(model, batches, estimator="population", progress=False)
    return predict(model.eval(), ctx.stream, ctx.eval_batch_size)


def _with_policy(policy: Callable[[StreamContext], bnkit.Policy]) -> Callable[..., Tensor]:
    def run(model: nn.Module, ctx: StreamContext) -> Tensor:
        bnkit.apply(model, policy(ctx))
        model.eval()
        return _per_batch(model, ctx, model)

    return run


def _tent(reset: bool) -> Callable[..., Tensor]:
    def run(model: nn.Module, ctx: StreamContext) -> Tensor:
        model.eval()
        size, every = ctx.batch_size, ctx.reset_every
        out = []
        with bnkit.tent(model, lr=ctx.tent_lr, steps=1, episodic=False) as adapt, torch.no_grad():
            for b, xb in enumerate(in_batches(ctx.stream, size)):
                if reset and b and b % every == 0:
                    adapt.reset()
                out.append(adapt(xb).float().cpu())
        return torch.cat(out)

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
            "tent_long",
            "bnkit.tent(model, stress lr) along a long stream (thousands of images), scored on "
            "its last pass",
            _tent(False),
        ),
        Strategy(
            "tent_reset",
            "as tent_long, with adapt.reset() every reset_every batches (periodic reset)",
            _tent(True),
        ),
    )
}
"""Test-time strategies by name."""
