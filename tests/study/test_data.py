"""The digits data: splits, few-shot samples, stream orders."""

from __future__ import annotations

import numpy as np
import pytest

from bnkit.study.data import (
    FRACTIONS,
    Domain,
    digits,
    k_shot,
    rng_for,
    shifted,
    split,
    stream_order,
)


def labelled(n_per_class: int = 30, classes: int = 4) -> Domain:
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
    parts = split(data, seed)
    sets = [
        ids(p) for p in (parts.source_train, parts.source_val, parts.target_pool, parts.target_test)
    ]
    assert sum(len(s) for s in sets) == len(data)
    assert set().union(*sets) == ids(data)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not sets[i] & sets[j]
    for part, share in zip(
        (parts.source_train, parts.source_val, parts.target_pool, parts.target_test),
        FRACTIONS,
        strict=True,
    ):
        counts = np.bincount(part.y, minlength=4)
        assert (np.abs(counts - share * 30) <= 1).all(), counts
        for v in part.x.reshape(-1):  # labels travel with their images
            assert part.y[list(part.x.reshape(-1)).index(v)] == data.y[int(v)]


def test_split_depends_on_the_seed_only() -> None:
    data = labelled()
    a, b, c = split(data, 3), split(data, 3), split(data, 4)
    np.testing.assert_array_equal(a.target_test.x, b.target_test.x)
    assert not np.array_equal(a.target_test.x, c.target_test.x)


def test_digits_are_scaled_upsampled_and_cached() -> None:
    d = digits(16)
    assert d.x.shape == (1797, 1, 16, 16) and d.x.dtype == np.float32
    assert d.x.min() >= 0.0 and d.x.max() <= 1.0 and d.x.max() > 0.9
    assert np.bincount(d.y).min() >= 170
    assert digits(16) is d
    assert digits(8).x.shape == (1797, 1, 8, 8)
    np.testing.assert_allclose(digits(8).x.mean(), d.x.mean(), atol=0.02)


def test_k_shot_takes_k_of_every_class_without_repeats() -> None:
    y = labelled().y
    idx = k_shot(y, 5, rng_for(0, "k"))
    assert len(set(idx.tolist())) == 20
    assert np.bincount(y[idx]).tolist() == [5, 5, 5, 5]
    np.testing.assert_array_equal(idx, k_shot(y, 5, rng_for(0, "k")))
    with pytest.raises(ValueError, match="fewer than k=31"):
        k_shot(y, 31, rng_for(0))


def test_stream_orders() -> None:
    y = labelled().y
    iid = stream_order(y, "iid", rng_for(0, "s"))
    srt = stream_order(y, "sorted", rng_for(0, "s"))
    assert sorted(iid.tolist()) == sorted(srt.tolist()) == list(range(len(y)))
    assert (np.diff(y[srt]) >= 0).all()
    assert (np.diff(y[iid]) != 0).sum() > len(y) // 2  # an i.i.d. order switches class often
    with pytest.raises(ValueError, match="stream must be"):
        stream_order(y, "shuffled", rng_for(0))


def test_shifted_targets_are_reproducible_per_seed_shift_and_severity() -> None:
    d = split(digits(8), 0).target_test
    a = shifted(d, "gaussian_noise", 5, 0, "test")
    b = shifted(d, "gaussian_noise", 5, 0, "test")
    c = shifted(d, "gaussian_noise", 5, 1, "test")
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, d.y)
    assert not np.array_equal(a.x, c.x)
