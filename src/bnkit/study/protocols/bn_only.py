"""The BN-only check: a randomly initialized network trained only in BatchNorm gamma/beta.

Every other weight (convolutions, the linear head) stays at its random initialization, as in
Frankle et al. 2021; the statistics behave as plain BatchNorm. The cell scores the network on
the held-out source images.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import torch
import torch.nn as nn

from bnkit.study.data.domain import Domain
from bnkit.study.data.feed import Feed
from bnkit.study.models.training import fit, only_bn_affine, predict

__all__ = ["bn_only_from_scratch"]


def bn_only_from_scratch(
    build: Callable[[], nn.Module],
    source: Domain,
    val: Domain,
    *,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    feed: Feed,
    eval_batch_size: int = 512,
) -> torch.Tensor:
    """Held-out logits of a random network after ``steps`` SGD steps on gamma/beta only."""
    torch.manual_seed(zlib.crc32(f"bn-only-{seed}".encode()))
    model = feed.place(build())
    params = only_bn_affine(model)
    fit(
        model,
        feed.images(source.x),
        torch.from_numpy(source.y).to(feed.device),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        generator=torch.Generator().manual_seed(seed),
        params=params,
        warmup=max(1, steps // 10),
        schedule="cosine",
    )
    return predict(model, feed.images(val.x), eval_batch_size)
