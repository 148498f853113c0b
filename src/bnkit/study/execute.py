"""Running cells in one process: each cell starts from a copy of the source model, is seeded
from its own key, and is written to disk the moment it finishes.

Everything a cell depends on is derived from the seed and the cell's coordinates only (the split,
the shifted images, the stream order, the few-shot labels, the batch order), never from which
process runs it or what ran before, so strategies are compared on identical inputs and a
resumed study computes what an uninterrupted one would.
"""

from __future__ import annotations

import copy
import time
import zlib
from pathlib import Path
from typing import Any

import torch

from bnkit.study.bench import Bench, BenchSpec, make_bench
from bnkit.study.cells import Cell, write_cell
from bnkit.study.data import k_shot, rng_for, stream_order
from bnkit.study.metrics import accuracy, ece, nonfinite
from bnkit.study.pretrain import bn_only_from_scratch
from bnkit.study.strategies import FINETUNE, TEST_TIME, FineTuneContext, StreamContext
from bnkit.study.training import predict

__all__ = ["pretrain_task", "run_cell", "run_cells"]


def _tensor(array: Any, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(array).to(device)


def run_cell(bench: Bench, cell: Cell) -> dict[str, Any]:
    """Run one cell on ``bench`` and return its result row."""
    torch.manual_seed(zlib.crc32(cell.key.encode()))
    dev = bench.device
    start = time.perf_counter()
    images_per_s: float
    if cell.protocol == "bn_only":
        s = bench.split(cell.seed)
        tc = bench.config
        logits = bn_only_from_scratch(
            lambda: bench.build("bn"),
            s.source_train,
            s.source_val,
            epochs=tc.bn_only.epochs,
            lr=tc.bn_only.lr,
            batch_size=tc.pretrain.batch_size,
            seed=cell.seed,
            device=dev,
        )
        labels = torch.from_numpy(s.source_val.y)
        wall = time.perf_counter() - start
        images_per_s = tc.bn_only.epochs * len(s.source_train) / wall
    else:
        model = copy.deepcopy(bench.source_model(cell.model, cell.seed).model)
        pool, test = bench.target(cell.seed, cell.shift, cell.severity)
        if cell.protocol == "test_time":
            order = stream_order(test.y, cell.stream, rng_for(cell.seed, "stream"))
            labels = torch.from_numpy(test.y[order])
            tt = bench.config.test_time
            ctx = StreamContext(
                pool=_tensor(pool.x, dev),
                stream=_tensor(test.x[order], dev),
                batch_size=cell.batch_size or 256,
                n=cell.n or None,
                prior_strength=tt.prior_strength,
                adapt_momentum=tt.adapt_momentum,
                tent_lr=tt.tent_lr,
                stress_lr=tt.stress_lr,
                stress_passes=tt.stress_passes,
            )
            out = TEST_TIME[cell.strategy].fn(model, ctx)
            assert isinstance(out, torch.Tensor)
            logits = out
            wall = time.perf_counter() - start
            passes = tt.stress_passes if cell.strategy == "tent_stress" else 1
            images_per_s = passes * len(test) / wall
        else:
            ft = bench.config.finetune
            idx = k_shot(pool.y, cell.k, rng_for(cell.seed, "k-shot", cell.k))
            order_seed = zlib.crc32(f"{cell.seed}.{cell.shift}.{cell.k}.{cell.batch_size}".encode())
            fctx = FineTuneContext(
                x=_tensor(pool.x[idx], dev),
                y=_tensor(pool.y[idx], dev),
                pool=_tensor(pool.x, dev),
                batch_size=cell.batch_size,
                steps=ft.steps,
                lr=cell.lr,
                ghost_size=ft.ghost_size,
                generator=torch.Generator().manual_seed(order_seed),
            )
            FINETUNE[cell.strategy].fn(model, fctx)
            trained = time.perf_counter() - start
            logits = predict(model, _tensor(test.x, dev))
            labels = torch.from_numpy(test.y)
            wall = time.perf_counter() - start
            images_per_s = ft.steps * min(cell.batch_size, len(idx)) / trained
    row = cell.fields()
    row.update(
        family=bench.family(cell.shift),
        accuracy=accuracy(logits, labels),
        ece=ece(logits, labels),
        nonfinite=nonfinite(logits),
        wall_s=wall,
        images_per_s=images_per_s,
    )
    return row


def run_cells(spec: BenchSpec, cells: list[Cell], out: str) -> list[dict[str, Any]]:
    """Run ``cells`` in this process, writing each to ``out/cells`` as soon as it finishes."""
    bench = make_bench(spec)
    folder = Path(out) / "cells"
    rows = []
    for cell in cells:
        row = run_cell(bench, cell)
        write_cell(folder, cell, row)
        rows.append(row)
    return rows


def pretrain_task(spec: BenchSpec, norm: str, seed: int) -> dict[str, Any]:
    """Make sure the source model (norm, seed) is in the cache; return what is known of it."""
    got = make_bench(spec).source_model(norm, seed)
    return {
        "model": norm,
        "seed": seed,
        "val_accuracy": got.val_accuracy,
        "train_s": got.train_seconds,
        "cache_hit": got.cache_hit,
        "path": str(got.path),
    }
