"""Stream orders: i.i.d., label-sorted, temporally correlated (Dirichlet), long streams."""

from __future__ import annotations

import numpy as np
import pytest

from bnkit.study.data.domain import rng_for
from bnkit.study.data.streams import long_stream, stream_order

Y = np.repeat(np.arange(10), 36).astype(np.int64)


def switches(labels: np.ndarray) -> int:
    return int((np.diff(labels) != 0).sum())


@pytest.mark.parametrize("kind", ["iid", "sorted", "dirichlet"])
def test_every_order_is_a_permutation_fixed_by_its_generator(kind: str) -> None:
    order = stream_order(Y, kind, rng_for(0, kind))
    assert sorted(order.tolist()) == list(range(len(Y)))
    np.testing.assert_array_equal(order, stream_order(Y, kind, rng_for(0, kind)))


def test_sorted_streams_show_one_class_after_another() -> None:
    order = stream_order(Y, "sorted", rng_for(1))
    assert switches(Y[order]) == 9
    assert switches(Y[stream_order(Y, "iid", rng_for(1))]) > 250


def test_dirichlet_streams_are_correlated_and_alpha_sets_how_much() -> None:
    def mean_switches(alpha: float) -> float:
        return float(np.mean([switches(Y[stream_order(Y, "dirichlet", rng_for(s), alpha)])
                              for s in range(5)]))  # fmt: skip

    few, many = mean_switches(0.1), mean_switches(100.0)
    iid = np.mean([switches(Y[stream_order(Y, "iid", rng_for(s))]) for s in range(5)])
    assert 9 <= few < 50 < many < iid  # small alpha: few long runs, nearer sorted (9)


def test_a_long_stream_repeats_the_set_and_ends_with_one_whole_pass() -> None:
    order = long_stream(Y, 1000, "iid", rng_for(2))
    assert len(order) == 1000
    assert sorted(order[-len(Y) :].tolist()) == list(range(len(Y)))
    assert len(long_stream(Y, 10, "iid", rng_for(2))) == len(Y)


def test_unknown_stream() -> None:
    with pytest.raises(ValueError, match="stream must be"):
        stream_order(Y, "shuffled", rng_for(0))
