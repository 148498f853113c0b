"""Source models: trained once per configuration and seed, then loaded from an on-disk cache.

The cache file's name is a hash of everything that decides the weights: the model's
description, the training settings, the seed, the cache format and a digest of the training
images and labels. A file is written atomically (temporary file, then ``os.replace``) and read
with ``torch.load(weights_only=True)``, so a cache can be shared by concurrent processes and
never executes code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from bnkit.study._atomic import atomic_file
from bnkit.study.config import PretrainConfig
from bnkit.study.data import Domain
from bnkit.study.metrics import accuracy
from bnkit.study.training import fit, only_bn_affine, predict

__all__ = [
    "CACHE_VERSION",
    "Pretrained",
    "bn_only_from_scratch",
    "cache_key",
    "fingerprint",
    "pretrained",
]

CACHE_VERSION = 1
"""Bumped whenever the training code changes what a cached model would be."""


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A source model with its held-out source accuracy and where it came from."""

    model: nn.Module
    val_accuracy: float
    train_seconds: float
    cache_hit: bool
    path: Path


def fingerprint(domain: Domain) -> str:
    """A digest of a domain's images and labels."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(domain.x).tobytes())
    h.update(np.ascontiguousarray(domain.y).tobytes())
    return h.hexdigest()[:16]


def cache_key(description: dict[str, Any], settings: PretrainConfig, seed: int, data: str) -> str:
    """The hash naming a cached model (see the module docstring for what goes in)."""
    blob = json.dumps(
        {
            "model": description,
            "settings": dataclasses.asdict(settings),
            "seed": seed,
            "data": data,
            "version": CACHE_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _tensors(domain: Domain, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(domain.x).to(device), torch.from_numpy(domain.y).to(device)


def pretrained(
    build: Callable[[], nn.Module],
    description: dict[str, Any],
    source: Domain,
    val: Domain,
    *,
    settings: PretrainConfig,
    seed: int,
    cache_dir: Path,
    device: torch.device,
) -> Pretrained:
    """The source model for ``seed``: from the cache, or trained on ``source`` and cached.

    Training: SGD (momentum 0.9, weight decay), cosine schedule from ``settings.lr``, batches of
    ``settings.batch_size`` for ``settings.epochs`` epochs; initialization and batch order come
    from ``seed`` and the model description only.
    """
    key = cache_key(description, settings, seed, fingerprint(source))
    label = str(description.get("name", "model")).replace("/", "_").replace(":", "_")
    path = Path(cache_dir) / f"{label}-{key}.pt"
    xv, yv = _tensors(val, device)
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = build()
        model.load_state_dict(state["state_dict"])
        model.to(device).eval()
        return Pretrained(model, float(state["val_accuracy"]), 0.0, True, path)
    start = time.perf_counter()
    torch.manual_seed(zlib.crc32(f"init-{key}".encode()))
    model = build().to(device)
    xs, ys = _tensors(source, device)
    steps = settings.epochs * max(1, len(source) // settings.batch_size)
    fit(
        model,
        xs,
        ys,
        steps=steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        generator=torch.Generator().manual_seed(seed),
        weight_decay=settings.weight_decay,
        schedule="cosine",
    )
    acc = accuracy(predict(model, xv), yv.cpu())
    seconds = time.perf_counter() - start
    _save(path, {"state_dict": _cpu_state(model), "val_accuracy": acc, "key": key})
    return Pretrained(model.eval(), acc, seconds, False, path)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _save(path: Path, payload: dict[str, Any]) -> None:
    with atomic_file(path, "wb") as f:
        torch.save(payload, f)


def bn_only_from_scratch(
    build: Callable[[], nn.Module],
    source: Domain,
    val: Domain,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: torch.device,
) -> torch.Tensor:
    """Held-out logits of a randomly initialized network trained only in BN gamma/beta.

    Every other weight (convolutions, the linear head) stays at its random initialization, as in
    Frankle et al. 2021; the statistics behave as plain BatchNorm.
    """
    torch.manual_seed(zlib.crc32(f"bn-only-{seed}".encode()))
    model = build().to(device)
    params = only_bn_affine(model)
    xs, ys = _tensors(source, device)
    fit(
        model,
        xs,
        ys,
        steps=epochs * max(1, len(source) // batch_size),
        batch_size=batch_size,
        lr=lr,
        generator=torch.Generator().manual_seed(seed),
        params=params,
        schedule="cosine",
    )
    return predict(model, torch.from_numpy(val.x).to(device))
