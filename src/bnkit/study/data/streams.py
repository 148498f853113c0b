"""The order in which a test stream presents its samples, i.i.d. or not.

* ``"iid"``: a random permutation.
* ``"sorted"``: grouped by label (classes in a random order, each class shuffled), the
  label-sorted stream of non-i.i.d. test-time adaptation benchmarks (SAR, TTAB).
* ``"dirichlet"``: temporally correlated labels, as in NOTE and RoTTA: the stream is cut into
  :data:`SLOTS` consecutive slots, each class spreads its samples over the slots in proportions
  drawn from Dirichlet(α), and within a slot the classes follow each other in a random order
  (each class in one run). Small α puts most of a class in one or two slots (few long runs,
  close to the label-sorted stream); large α puts every class in every slot (many short runs).

:func:`long_stream` repeats a test set in fresh orders, for the stress arms that need
thousands of updates.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["SLOTS", "long_stream", "stream_order"]

SLOTS = 10
"""Time slots of the Dirichlet stream."""


def stream_order(
    labels: NDArray[np.int64], kind: str, rng: np.random.Generator, alpha: float = 0.1
) -> NDArray[np.int64]:
    """Indices into ``labels`` in the order the ``kind`` stream presents them."""
    n = labels.shape[0]
    if kind == "iid":
        return rng.permutation(n).astype(np.int64)
    if kind == "sorted":
        classes = rng.permutation(np.unique(labels))
        return np.concatenate(
            [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
        ).astype(np.int64)
    if kind == "dirichlet":
        slots: list[list[NDArray[np.int64]]] = [[] for _ in range(SLOTS)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(SLOTS, alpha))
            cuts = np.round(np.cumsum(shares)[:-1] * idx.size).astype(int)
            for slot, chunk in zip(slots, np.split(idx, cuts), strict=True):
                slot.append(chunk)
        runs = [slot[i] for slot in slots for i in rng.permutation(len(slot))]
        return np.concatenate(runs).astype(np.int64)
    raise ValueError(f"stream must be 'iid', 'sorted' or 'dirichlet' (got {kind!r})")


def long_stream(
    labels: NDArray[np.int64], length: int, kind: str, rng: np.random.Generator, alpha: float = 0.1
) -> NDArray[np.int64]:
    """``length`` indices: passes over ``labels`` in fresh ``kind`` orders, the last pass whole.

    The stream ends with one complete pass over the test set (which the stress arms are
    scored on); the passes before it are cut so the total is ``max(length, len(labels))``.
    """
    n = labels.shape[0]
    passes = [stream_order(labels, kind, rng, alpha) for _ in range(max(1, -(-length // n)))]
    order = np.concatenate(passes)
    return order[-max(length, n) :].astype(np.int64)
