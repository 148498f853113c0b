"""Splits and few-shot samples: disjoint, stratified, reproducible from the seed alone."""

from __future__ import annotations

import numpy as np
import pytest

from bnkit.study.data.domain import Domain, fingerprint, k_shot, rng_for, split
from bnkit.study.data.scenarios import FRACTIONS, split_of, target_parts

SHARES = FRACTIONS["digits"]


def labelled(n_per_class: int = 40, classes: int = 4) -> Domain:
    """A domain whose images carry their own index, so parts can be traced back."""
    n = n_per_class * classes
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1)
    y = np.repeat(np.arange(classes), n_per_class).astype(np.int64)
    return Domain(x, y)


def ids(d: Domain) -> set[int]:
    return {int(v) for v in d.x.reshape(-1)}


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_is_disjoint_complete_and_stratified(seed: int) -> None:
    data = labelled()
    parts = split(data, SHARES, rng_for(seed, "split"))
    sets = [ids(p) for p in parts]
    assert sum(len(s) for s in sets) == len(data)
    assert set().union(*sets) == ids(data)
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            assert not sets[i] & sets[j]
    for part, share in zip(parts, SHARES, strict=True):
        counts = np.bincount(part.y, minlength=4)
        assert (np.abs(counts - share * 40) <= 1).all(), counts
        for v, label in zip(part.x.reshape(-1), part.y, strict=True):  # labels travel along
            assert label == data.y[int(v)]


def test_split_depends_on_the_generator_only() -> None:
    data = labelled()
    a, b = split(data, SHARES, rng_for(3)), split(data, SHARES, rng_for(3))
    c = split(data, SHARES, rng_for(4))
    np.testing.assert_array_equal(a[-1].x, b[-1].x)
    assert not np.array_equal(a[-1].x, c[-1].x)


def test_k_shot_takes_k_of_every_class_without_repeats() -> None:
    y = labelled().y
    idx = k_shot(y, 5, rng_for(0, "k"))
    assert len(set(idx.tolist())) == 20
    assert np.bincount(y[idx]).tolist() == [5, 5, 5, 5]
    np.testing.assert_array_equal(idx, k_shot(y, 5, rng_for(0, "k")))
    with pytest.raises(ValueError, match="fewer than k=41"):
        k_shot(y, 41, rng_for(0))


def test_targets_share_their_images_across_strategies_and_differ_by_seed() -> None:
    pool, val, test = target_parts("gaussian_noise", 5, 8, 0)
    again = target_parts("gaussian_noise", 5, 8, 0)
    other = target_parts("gaussian_noise", 5, 8, 1)
    np.testing.assert_array_equal(test.x, again[2].x)
    assert not np.array_equal(test.x, other[2].x)
    clean = split_of("digits", 8, 0)
    np.testing.assert_array_equal(test.y, clean.target_test.y)  # only the images shift
    assert not np.array_equal(test.x, clean.target_test.x)
    assert {fingerprint(pool), fingerprint(val)} & {fingerprint(test)} == set()


def test_real_shifts_take_source_and_target_from_different_data_sets() -> None:
    mnist, digits = split_of("mnist", 8, 0), split_of("digits", 8, 0)
    _, _, test = target_parts("digits_to_mnist", 0, 8, 0)
    np.testing.assert_array_equal(test.x, mnist.target_test.x)
    pool2, _, _ = target_parts("mnist_to_digits", 0, 8, 0)
    np.testing.assert_array_equal(pool2.x, digits.target_pool.x)
    assert len(mnist.source_train) == 2500 and len(mnist.target_test) == 500
