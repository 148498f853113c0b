"""Images with labels, and the seeded, stratified ways the study cuts them into parts.

Every random choice of the study comes from :func:`rng_for` with the parts that decide it (the
seed, a purpose, the shift, …), never from global state or from which process runs, so every
strategy sees exactly the same images and a resumed study computes what an uninterrupted one
would.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zlib

import numpy as np
from numpy.typing import NDArray

from bnkit.study.data.files import FileImages

__all__ = ["PARTS", "Domain", "Split", "fingerprint", "k_shot", "rng_for", "split"]

Images = NDArray[np.float32] | FileImages
"""In memory (the built-in data sets, a data factory's) or image files read on demand."""
Labels = NDArray[np.int64]

PARTS = ("source_train", "source_val", "target_pool", "target_val", "target_test")
"""The five disjoint parts of a split."""


@dataclasses.dataclass(frozen=True)
class Domain:
    """Images (N, C, H, W) with their labels (N,): an array in memory, or image files read
    on demand (:class:`~bnkit.study.data.files.FileImages`)."""

    x: Images
    y: Labels

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def take(self, idx: NDArray[np.int64]) -> Domain:
        """The samples at ``idx``, in that order."""
        return Domain(self.x[idx], self.y[idx])


@dataclasses.dataclass(frozen=True)
class Split:
    """One seed's data: source training and held-out parts; the target's unlabelled pool
    (statistics, and the few labels of fine-tuning), labelled validation part (choosing the
    fine-tuning learning rate) and test part (every score)."""

    source_train: Domain
    source_val: Domain
    target_pool: Domain
    target_val: Domain
    target_test: Domain


def rng_for(*parts: int | str) -> np.random.Generator:
    """A generator seeded by ``parts`` alone (strings are hashed with CRC32, stable everywhere)."""
    ints = [p if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]
    return np.random.default_rng(ints)


def fingerprint(domain: Domain) -> str:
    """A digest of a domain's images (of its files, for files) and labels."""
    h = hashlib.sha256()
    if isinstance(domain.x, FileImages):
        h.update(domain.x.fingerprint().encode())
    else:
        h.update(np.ascontiguousarray(domain.x).tobytes())
    h.update(np.ascontiguousarray(domain.y).tobytes())
    return h.hexdigest()[:16]


def split(data: Domain, fractions: tuple[float, ...], rng: np.random.Generator) -> list[Domain]:
    """A stratified split of ``data`` into parts of the given shares, shuffled by ``rng``.

    Every class is divided in the given shares (rounded; the last part takes the rest), so the
    parts are disjoint and have the class proportions of the whole. Shares summing to less
    than 1 leave the rest unused.
    """
    parts: list[list[NDArray[np.int64]]] = [[] for _ in fractions]
    bounds = np.cumsum(fractions)
    for label in np.unique(data.y):
        idx = rng.permutation(np.flatnonzero(data.y == label))
        cuts = np.round(bounds * idx.size).astype(int)
        start = 0
        for part, end in zip(parts, cuts, strict=True):
            part.append(idx[start:end])
            start = end
    return [data.take(rng.permutation(np.concatenate(p)).astype(np.int64)) for p in parts]


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
