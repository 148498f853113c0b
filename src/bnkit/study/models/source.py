"""Source models: trained until they converge, once per identity and seed, then cached on disk.

Training (:class:`~bnkit.study.config.settings.PretrainConfig`): SGD with momentum, linear
warmup, constant learning rate; every ``eval_every`` steps the loss on the held-out source part
is measured, and training stops once it has not improved for ``patience`` measurements (or at
``max_steps``); the weights of the best measurement are kept. The cache file's name is a hash
of everything that decides the weights: the model's identity (its name and a digest of its
initial weights), the training settings, the seed, digests of the training and held-out
images, the device kind and the cache format. Files are written atomically and read with
``torch.load(weights_only=True)``, so a cache can be shared by concurrent processes and never
executes code; a lock file next to each cache file makes the processes that need the same
model wait for the one training it instead of training it again.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from bnkit.study.atomic import atomic_file
from bnkit.study.config.settings import PretrainConfig
from bnkit.study.data.domain import Domain, fingerprint
from bnkit.study.data.feed import Feed
from bnkit.study.models.scores import accuracy
from bnkit.study.models.training import fit, predict

__all__ = [
    "CACHE_VERSION",
    "Pretrained",
    "cache_key",
    "from_payload",
    "init_seed",
    "pretrained",
    "source_file",
    "weights_digest",
]

CACHE_VERSION = 2
"""Bumped whenever the training code changes what a cached model would be."""


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """A source model with its held-out source accuracy and how it came to be."""

    model: nn.Module
    val_accuracy: float
    train_seconds: float
    cache_hit: bool
    path: Path
    steps: int
    converged: bool


def weights_digest(model: nn.Module) -> str:
    """A digest of a model's state (names, shapes, dtypes and values)."""
    h = hashlib.sha256()
    for name, value in sorted(model.state_dict().items()):
        t = value.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()[:16]


def init_seed(identity: dict[str, Any], seed: int) -> int:
    """The torch seed of a source model's initialization (from its name and the seed)."""
    return zlib.crc32(f"init-{identity.get('name')}-{seed}".encode())


def cache_key(identity: dict[str, Any], settings: PretrainConfig, seed: int, data: str) -> str:
    """The hash naming a cached model (see the module docstring for what goes in)."""
    blob = json.dumps(
        {
            "model": identity,
            "settings": dataclasses.asdict(settings),
            "seed": seed,
            "data": data,
            "version": CACHE_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def source_file(
    build: Callable[[], nn.Module],
    identity: dict[str, Any],
    source: Domain,
    val: Domain,
    *,
    settings: PretrainConfig,
    seed: int,
    cache_dir: Path,
) -> tuple[nn.Module, Path]:
    """A freshly initialized model for ``seed`` and the cache file its trained weights go to.

    ``identity`` names the model (``"name"``) and what else decides it (the device kind);
    the initialization comes from ``seed`` and the name only, and its digest joins the key.
    """
    torch.manual_seed(init_seed(identity, seed))
    model = build()
    full = {**identity, "init": weights_digest(model)}
    key = cache_key(full, settings, seed, fingerprint(source) + fingerprint(val))
    label = str(identity.get("name", "model")).replace("/", "_").replace(":", "_")
    return model, Path(cache_dir) / f"{label}-{key}.pt"


def from_payload(model: nn.Module, payload: bytes, path: Path, device: torch.device) -> Pretrained:
    """The source model whose cache file's bytes are ``payload`` (read with
    ``weights_only=True``), as a cache hit: how executors hand a trained model to a task."""
    state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    model.load_state_dict(state["state_dict"])
    model.to(device).eval()
    return Pretrained(
        model,
        float(state["val_accuracy"]),
        0.0,
        True,
        path,
        int(state["steps"]),
        bool(state["converged"]),
    )


@contextlib.contextmanager
def _training_lock(path: Path) -> Iterator[None]:
    """One process trains a model at a time; the others wait, then read its cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def pretrained(
    build: Callable[[], nn.Module],
    identity: dict[str, Any],
    source: Domain,
    val: Domain,
    *,
    settings: PretrainConfig,
    seed: int,
    cache_dir: Path,
    device: torch.device,
    feed: Feed | None = None,
) -> Pretrained:
    """The source model for ``seed``: from the cache, or trained on ``source`` and cached.

    Processes sharing a cache never train the same model twice: training holds a lock file
    next to the cache file, and a process that waited for it reads the finished file.
    ``feed`` says how images reach the model (default: in-memory tensors on ``device``).
    """
    model, path = source_file(
        build, identity, source, val, settings=settings, seed=seed, cache_dir=cache_dir
    )
    feed = feed or Feed(device)
    with _training_lock(path):
        if path.exists():
            got = from_payload(model, path.read_bytes(), path, device)
            feed.place(got.model)
            return got
        return _train(model, path, source, val, settings, seed, feed)


def _train(
    model: nn.Module,
    path: Path,
    source: Domain,
    val: Domain,
    settings: PretrainConfig,
    seed: int,
    feed: Feed,
) -> Pretrained:
    device = feed.device
    key = path.stem.rsplit("-", 1)[-1]
    start = time.perf_counter()
    feed.place(model)
    xs, ys = feed.images(source.x), torch.from_numpy(source.y).to(device)
    xv, yv = feed.images(val.x), torch.from_numpy(val.y).to(device)
    best: dict[str, Any] = {"loss": float("inf"), "state": None, "step": 0, "stale": 0}

    def measure(step: int) -> bool:
        logits = predict(model, xv, settings.eval_batch_size).to(device)
        loss = float(F.cross_entropy(logits, yv))
        if loss < best["loss"]:
            best.update(loss=loss, state=copy.deepcopy(model.state_dict()), step=step, stale=0)
        else:
            best["stale"] += 1
        return bool(best["stale"] < settings.patience)

    fit(
        model,
        xs,
        ys,
        steps=settings.max_steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        generator=torch.Generator().manual_seed(seed),
        weight_decay=settings.weight_decay,
        warmup=settings.warmup_steps,
        every=settings.eval_every,
        on_eval=measure,
    )
    converged = best["stale"] >= settings.patience
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    acc = accuracy(predict(model, xv, settings.eval_batch_size), yv.cpu())
    seconds = time.perf_counter() - start
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {
        "state_dict": state,
        "val_accuracy": acc,
        "key": key,
        "steps": int(best["step"]),
        "converged": converged,
    }
    with atomic_file(path, "wb") as f:
        torch.save(payload, f)
    return Pretrained(model.eval(), acc, seconds, False, path, int(best["step"]), converged)
