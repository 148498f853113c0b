"""The study's data: the digits shipped with scikit-learn, split into a source and a target domain.

The 1,797 digits (8×8, intensities 0–16) are scaled to [0, 1] and upsampled (bilinear) to
``image_size``. Per seed they are split, stratified by class and disjointly, into

* ``source_train`` / ``source_val`` — the source domain: pretraining and its held-out check;
* ``target_pool`` — unlabelled target images for statistics (AdaBN) and the labelled few-shot
  sets of the fine-tuning protocol;
* ``target_test`` — where every strategy is scored.

A shift (:mod:`bnkit.study.shifts`) is applied to the two target splits, with random numbers
drawn from the seed, the shift and the severity only, so every strategy sees the same images.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from bnkit.study.shifts import apply_shift

__all__ = [
    "Domain",
    "Split",
    "digits",
    "k_shot",
    "rng_for",
    "shifted",
    "split",
    "stream_order",
]

Images = NDArray[np.float32]
Labels = NDArray[np.int64]

FRACTIONS = (0.5, 0.1, 0.2, 0.2)
"""Shares of each class in source_train, source_val, target_pool, target_test."""


@dataclasses.dataclass(frozen=True)
class Domain:
    """Images (N, C, H, W) in [0, 1] with their labels (N,)."""

    x: Images
    y: Labels

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, idx: NDArray[np.int64]) -> Domain:
        """The samples at ``idx``, in that order."""
        return Domain(self.x[idx], self.y[idx])


@dataclasses.dataclass(frozen=True)
class Split:
    """The four disjoint parts of one seed's data."""

    source_train: Domain
    source_val: Domain
    target_pool: Domain
    target_test: Domain


def rng_for(*parts: int | str) -> np.random.Generator:
    """A generator seeded by ``parts`` alone (strings are hashed with CRC32, stable everywhere)."""
    ints = [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]
    return np.random.default_rng(ints)


@functools.lru_cache(maxsize=4)
def digits(image_size: int) -> Domain:
    """The scikit-learn digits in [0, 1], upsampled to ``image_size`` × ``image_size``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = np.asarray(bunch.images, dtype=np.float64) / 16.0
    if image_size != raw.shape[-1]:
        factor = image_size / raw.shape[-1]
        raw = ndimage.zoom(raw, (1, factor, factor), order=1, mode="nearest", grid_mode=True)
    x: Images = np.clip(raw, 0.0, 1.0).astype(np.float32)[:, None]
    return Domain(x, np.asarray(bunch.target, dtype=np.int64))


def split(data: Domain, seed: int, fractions: tuple[float, ...] = FRACTIONS) -> Split:
    """A stratified split of ``data`` into the four parts, shuffled by ``seed``.

    Every class is divided in the given shares (rounded; the test part takes the rest), so the
    parts are disjoint, cover the data, and have the class proportions of the whole.
    """
    rng = rng_for(seed, "split")
    parts: list[list[NDArray[np.int64]]] = [[] for _ in fractions]
    bounds = np.cumsum(fractions)[:-1]
    for label in np.unique(data.y):
        idx = rng.permutation(np.flatnonzero(data.y == label))
        cuts = np.round(bounds * idx.size).astype(int)
        for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
            part.append(chunk)
    domains = [data.take(rng.permutation(np.concatenate(p))) for p in parts]
    return Split(*domains)


def shifted(domain: Domain, shift: str, severity: int, seed: int, part: str) -> Domain:
    """``domain`` under ``shift`` at ``severity``; the random numbers depend on all of them."""
    rng = rng_for(seed, shift, severity, part)
    return Domain(apply_shift(domain.x, shift, severity, rng), domain.y)


def k_shot(labels: Labels, k: int, rng: np.random.Generator) -> NDArray[np.int64]:
    """Indices of ``k`` samples of every class present in ``labels`` (shuffled).

    Raises:
        ValueError: a class has fewer than ``k`` samples.
    """
    picked = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        if idx.size < k:
            raise ValueError(
                f"class {label} has {idx.size} target-pool samples, fewer than k={k} labels "
                "per class; use a smaller k"
            )
        picked.append(rng.choice(idx, size=k, replace=False))
    return rng.permutation(np.concatenate(picked)).astype(np.int64)


def stream_order(labels: Labels, kind: str, rng: np.random.Generator) -> NDArray[np.int64]:
    """The order in which a test stream presents the samples.

    ``"iid"``: a random permutation. ``"sorted"``: grouped by label (classes in ascending
    order, each class in random order), the label-sorted stream of non-i.i.d. test-time
    adaptation benchmarks.
    """
    perm = rng.permutation(labels.shape[0])
    if kind == "iid":
        return perm.astype(np.int64)
    if kind == "sorted":
        return perm[np.argsort(labels[perm], kind="stable")].astype(np.int64)
    raise ValueError(f"stream must be 'iid' or 'sorted' (got {kind!r})")
