"""What one cell computes: from its coordinates and its bench to its row.

Each cell starts from a copy of its source model and is seeded from its name; everything it
depends on (the split, the shifted images, the stream order, the few-shot labels, the batch
order) derives from the seed and its coordinates only, never from which process runs it or
what ran before. So strategies are compared on identical inputs, and a cell computes the same
row in any process, on any executor, in any order. Images reach the model through the bench's
feed (in memory, or streamed from files; autocast and memory format as configured).
"""

from __future__ import annotations

import copy
import time
import zlib
from typing import Any

import torch

from bnkit.study.data.domain import k_shot, rng_for
from bnkit.study.data.streams import long_stream, stream_order
from bnkit.study.execution.bench import Bench
from bnkit.study.execution.cells import Cell
from bnkit.study.execution.faults import maybe_die
from bnkit.study.models.scores import accuracy, ece, nonfinite
from bnkit.study.models.training import predict
from bnkit.study.protocols.bn_only import bn_only_from_scratch
from bnkit.study.protocols.finetune import FineTuneContext, finetune
from bnkit.study.protocols.test_time import TEST_TIME, StreamContext

__all__ = ["compute_cell"]


def _test_time(bench: Bench, cell: Cell) -> tuple[torch.Tensor, torch.Tensor, int, float]:
    tt = bench.config.test_time
    feed = bench.feed
    model = copy.deepcopy(
        bench.source_model(bench.source_of(cell.shift), cell.model, cell.seed).model
    )
    pool, _, test = bench.parts(cell.seed, cell.shift, cell.severity)
    rng = rng_for(cell.seed, "stream", cell.stream)
    long = cell.strategy in ("tent_long", "tent_reset")
    if long:
        order = long_stream(test.y, tt.stress_images, cell.stream, rng, tt.dirichlet_alpha)
    else:
        order = stream_order(test.y, cell.stream, rng, tt.dirichlet_alpha)
    ctx = StreamContext(
        pool=feed.images(pool.x if not cell.n else pool.x[: cell.n]),
        stream=feed.images(test.x[order]),
        batch_size=cell.batch_size or 256,
        n=None,
        prior_strength=tt.prior_strength,
        adapt_momentum=tt.adapt_momentum,
        tent_lr=tt.stress_lr if long else tt.tent_lr,
        reset_every=tt.reset_every,
        eval_batch_size=tt.eval_batch_size,
        stats_batch_size=tt.stats_batch_size,
    )
    start = time.perf_counter()
    out = TEST_TIME[cell.strategy].fn(model, ctx)
    assert isinstance(out, torch.Tensor)
    seen = len(order)
    wall = time.perf_counter() - start
    last = len(test)  # long streams are scored on their last pass
    return out[-last:], torch.from_numpy(test.y[order][-last:]), seen, wall


def compute_cell(bench: Bench, cell: Cell) -> dict[str, Any]:
    """Run one cell on ``bench`` and return its result row (see ``ROW_FIELDS``)."""
    maybe_die(cell.name)
    with bench.feed.autocast():
        return _compute(bench, cell)


def _compute(bench: Bench, cell: Cell) -> dict[str, Any]:
    torch.manual_seed(zlib.crc32(cell.name.encode()))
    feed = bench.feed
    start = time.perf_counter()
    curve: list[float] = []
    val_acc = float("nan")
    if cell.protocol == "bn_only":
        train, val = bench.source_parts(bench.source_of("none"), cell.seed)
        c = bench.config
        logits = bn_only_from_scratch(
            lambda: bench.build("bn"),
            train,
            val,
            steps=c.bn_only.steps,
            lr=c.bn_only.lr,
            batch_size=c.pretrain.batch_size,
            seed=cell.seed,
            feed=feed,
            eval_batch_size=c.pretrain.eval_batch_size,
        )
        labels = torch.from_numpy(val.y)
        wall = time.perf_counter() - start
        images_per_s = c.bn_only.steps * c.pretrain.batch_size / wall
    elif cell.protocol == "test_time":
        logits, labels, seen, work = _test_time(bench, cell)
        wall = time.perf_counter() - start
        images_per_s = seen / max(work, 1e-9)
    else:
        ft = bench.config.finetune
        src = bench.source_model(bench.source_of(cell.shift), cell.model, cell.seed)
        model = copy.deepcopy(src.model)
        pool, val, test = bench.parts(cell.seed, cell.shift, cell.severity)
        idx = k_shot(pool.y, cell.k, rng_for(cell.seed, "k-shot", cell.k))
        order_seed = zlib.crc32(f"{cell.seed}.{cell.shift}.{cell.k}.{cell.batch_size}".encode())
        ctx = FineTuneContext(
            x=feed.resident(pool.x[idx]),  # k labels per class: read once, not every step
            y=torch.from_numpy(pool.y[idx]).to(feed.device),
            pool=feed.images(pool.x),
            val_x=feed.images(val.x),
            val_y=torch.from_numpy(val.y),
            batch_size=cell.batch_size,
            steps=ft.steps,
            warmup=ft.warmup_steps,
            lr=cell.lr,
            curve_points=ft.curve_points,
            ghost_size=ft.ghost_size,
            generator=torch.Generator().manual_seed(order_seed),
            eval_batch_size=ft.eval_batch_size,
            stats_batch_size=ft.stats_batch_size,
        )
        curve = finetune(model, cell.strategy, ctx)
        val_acc = curve[-1]
        trained = time.perf_counter() - start
        logits = predict(model, feed.images(test.x), ft.eval_batch_size)
        labels = torch.from_numpy(test.y)
        wall = time.perf_counter() - start
        images_per_s = ft.steps * min(cell.batch_size, len(idx)) / trained
    row = cell.fields()
    row.update(
        family=bench.family(cell.shift) if cell.protocol != "bn_only" else "none",
        source=bench.source_of(cell.shift),
        accuracy=accuracy(logits, labels),
        val_accuracy=val_acc,
        ece=ece(logits, labels),
        nonfinite=nonfinite(logits),
        curve=curve,
        wall_s=wall,
        images_per_s=images_per_s,
    )
    return row
