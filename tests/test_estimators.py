"""The estimators' arithmetic, fed directly: exact, split-invariant, mergeable across ranks."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from bnkit.stats.estimators import ESTIMATORS, BatchMean, Cumulative, Estimator, Population

CPU = torch.device("cpu")


def feed(cls: type[Estimator], chunks: list[Tensor]) -> Estimator:
    """Give the estimator what a layer's buffers hold after each (N, C) chunk."""
    est = cls(chunks[0].shape[1], CPU)
    mean = torch.zeros(chunks[0].shape[1])
    var = torch.ones(chunks[0].shape[1])
    for x in chunks:
        torch.batch_norm_update_stats(x, mean, var, est.next_factor())
        est.update(x.shape[0], mean, var)
    return est


sizes = st.lists(st.integers(2, 30), min_size=1, max_size=8)


@settings(max_examples=30)
@given(
    sizes=sizes,
    scale=st.sampled_from([1e-3, 1.0, 1e3]),
    offset=st.sampled_from([0.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_population_is_the_statistics_of_all_the_data(
    sizes: list[int], scale: float, offset: float, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(sum(sizes), 3, dtype=torch.float64, generator=g) * scale + offset
    est = feed(Population, list(torch.split(data.float(), sizes)))
    mean, var, count = Population.combine(est.local()[None])
    exact = data.float().double()
    # Per-batch means come rounded to float32 (by up to ~6e-8 * offset) from the kernel; the
    # variance then moves by about 2 * rounding * (spread of the batch means, <= scale).
    rounding = 1e-7 * offset
    torch.testing.assert_close(mean, exact.mean(0), rtol=1e-6, atol=1e-6 * scale + rounding)
    torch.testing.assert_close(
        var, exact.var(0), rtol=1e-5, atol=1e-9 * scale**2 + 4 * scale * rounding
    )
    assert count == len(sizes)


@settings(max_examples=20)
@given(sizes=sizes, cut=st.integers(0, 8), seed=st.integers(0, 2**16))
@pytest.mark.parametrize("cls", list(ESTIMATORS.values()))
def test_ranks_merge_to_the_single_process_numbers(
    cls: type[Estimator], sizes: list[int], cut: int, seed: int
) -> None:
    g = torch.Generator().manual_seed(seed)
    chunks = list(torch.split(torch.randn(sum(sizes), 4, generator=g) * 3 + 1, sizes))
    cut = min(cut, len(chunks))
    whole = cls.combine(feed(cls, chunks).local()[None])
    parts = [chunks[:cut], chunks[cut:]]
    rows = [feed(cls, p).local() if p else cls(4, CPU).local() for p in parts]
    merged = cls.combine(torch.stack(rows))
    torch.testing.assert_close(merged[0], whole[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(merged[1], whole[1], rtol=1e-6, atol=1e-6)
    assert merged[2] == whole[2] == len(sizes)


def test_batch_mean_and_cumulative_weigh_batches_equally() -> None:
    chunks = [torch.randn(n, 2) + i for i, n in enumerate([3, 50, 7])]
    means = torch.stack([c.double().mean(0) for c in chunks]).mean(0)
    variances = torch.stack([c.double().var(0) for c in chunks]).mean(0)
    for cls in (BatchMean, Cumulative):
        mean, var, _ = cls.combine(feed(cls, chunks).local()[None])
        torch.testing.assert_close(mean, means, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(var, variances, rtol=1e-6, atol=1e-6)


def test_one_rank_of_cumulative_gives_the_buffers_back_exactly() -> None:
    chunks = [torch.randn(n, 5) * 7 for n in (9, 4, 13)]
    est = feed(Cumulative, chunks)
    assert isinstance(est, Cumulative) and est.last is not None
    mean, var, _ = Cumulative.combine(est.local()[None])
    assert torch.equal(mean.float(), est.last[0]) and torch.equal(var.float(), est.last[1])
