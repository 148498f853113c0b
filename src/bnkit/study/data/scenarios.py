"""Which images a target domain is made of, per seed: the built-in scenarios.

Every data set is split per seed (stratified, disjoint) into the five parts of
:class:`~bnkit.study.data.domain.Split` with the shares of :data:`FRACTIONS`. A target is

* ``"none"``: the digits' target parts, unshifted (the reference, and the fine-tuning scenario
  "small batches without a shift");
* a synthetic shift at a severity: the digits' target parts under that shift (random numbers
  drawn from the seed, the shift, the severity and the part only);
* ``"mnist_to_digits"``: source parts from MNIST, target parts from the digits;
* ``"digits_to_mnist"``: source parts from the digits, target parts from MNIST.
"""

from __future__ import annotations

import functools

import numpy as np

from bnkit.study.data.domain import Domain, Split, rng_for, split
from bnkit.study.data.shifts import SHIFTS, apply_shift
from bnkit.study.data.sources import load

__all__ = ["FRACTIONS", "family", "source_dataset", "split_of", "target_dataset", "target_parts"]

FRACTIONS = {"digits": (0.45, 0.1, 0.15, 0.1, 0.2), "mnist": (0.5, 0.1, 0.1, 0.1, 0.1)}
"""Per data set, the shares of each class in source_train, source_val, target_pool,
target_val and target_test (MNIST: 2,500 / 500 / 500 / 500 / 500 images)."""


def source_dataset(shift: str) -> str:
    """The data set the source model of ``shift`` is trained on."""
    return "mnist" if shift == "mnist_to_digits" else "digits"


def target_dataset(shift: str) -> str:
    """The data set the target images of ``shift`` come from."""
    return "mnist" if shift == "digits_to_mnist" else "digits"


def family(shift: str) -> str:
    """The shift's family: ``"none"``, ``"real"`` or a synthetic family."""
    if shift == "none":
        return "none"
    if shift in ("mnist_to_digits", "digits_to_mnist"):
        return "real"
    return SHIFTS[shift].family


@functools.lru_cache(maxsize=16)
def split_of(name: str, image_size: int, seed: int) -> Split:
    """The five parts of data set ``name`` for ``seed``."""
    parts = split(load(name, image_size), FRACTIONS[name], rng_for(seed, "split", name))
    return Split(*parts)


@functools.lru_cache(maxsize=8)
def target_parts(
    shift: str, severity: int, image_size: int, seed: int
) -> tuple[Domain, Domain, Domain]:
    """(pool, validation, test) of the target ``shift`` at ``severity`` for ``seed``."""
    s = split_of(target_dataset(shift), image_size, seed)
    parts = (("pool", s.target_pool), ("val", s.target_val), ("test", s.target_test))
    if shift == "none" or shift not in SHIFTS:
        return s.target_pool, s.target_val, s.target_test
    out = []
    for name, d in parts:
        assert isinstance(d.x, np.ndarray)  # the built-in data sets are in memory
        rng = rng_for(seed, shift, severity, name)
        out.append(Domain(apply_shift(d.x, shift, severity, rng), d.y))
    return out[0], out[1], out[2]
