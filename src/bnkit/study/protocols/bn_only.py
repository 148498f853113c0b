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
    device: torch.device,
) -> torch.Tensor:
    """Held-out logits of a random network after ``steps`` SGD steps on gamma/beta only."""
    torch.manual_seed(zlib.crc32(f"bn-only-{seed}".encode()))
    model = build().to(device)
    params = only_bn_affine(model)
    fit(
        model,
        torch.from_numpy(source.x).to(device),
        torch.from_numpy(source.y).to(device),
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        generator=torch.Generator().manual_seed(seed),
        params=params,
        warmup=max(1, steps // 10),
        schedule="cosine",
    )
    return predict(model, torch.from_numpy(val.x).to(device))
