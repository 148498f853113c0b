"""The formulas of ``bnkit.functional`` against the same math written out in float64."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bnkit import functional as BF
from bnkit.functional.stats import channel_dims, per_channel


def _t(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_shapes_of_the_per_channel_helpers() -> None:
    x = _t(2, 3, 4, 5)
    assert BF.values_per_channel(x) == 40
    assert channel_dims(x) == [0, 2, 3]
    assert per_channel(torch.arange(3.0), x).shape == (1, 3, 1, 1)
    assert BF.values_per_channel(_t(7, 3)) == 7


@pytest.mark.parametrize("inplace", [False, True])
def test_ema_is_one_minus_f_times_old_plus_f_times_new(inplace: bool) -> None:
    old, new = _t(5), _t(5, seed=1)
    expected = 0.7 * old + 0.3 * new
    running = old.clone()
    got = BF.ema(running, new, 0.3, inplace=inplace)
    torch.testing.assert_close(got, expected)
    assert torch.equal(running, expected if inplace else old)
    assert (got is running) == inplace


def test_ema_takes_a_tensor_factor() -> None:
    old, new = _t(4), _t(4, seed=1)
    torch.testing.assert_close(BF.ema(old, new, torch.tensor(0.25, dtype=torch.float64)),
                               0.75 * old + 0.25 * new)  # fmt: skip


def test_unbiased_variance_and_its_one_value_limit() -> None:
    var = torch.tensor([2.0, 3.0], dtype=torch.float64)
    torch.testing.assert_close(BF.unbiased(var, 4), var * 4 / 3)
    counts = torch.tensor([4.0, 5.0], dtype=torch.float64)
    torch.testing.assert_close(BF.unbiased(var, counts), var * counts / (counts - 1))
    assert torch.isinf(BF.unbiased(var, 1)).all()  # one value: no variance estimate
    assert torch.isinf(BF.unbiased(var, 0)).all()


def test_moments_and_batch_stats_are_the_per_channel_mean_and_biased_variance() -> None:
    x = _t(6, 3, 2, 2)
    flat = x.transpose(0, 1).reshape(3, -1)
    for mean, var in (BF.moments(x), BF.batch_stats(x)):
        torch.testing.assert_close(mean, flat.mean(1))
        torch.testing.assert_close(var, flat.var(1, unbiased=False))


def test_masked_moments_are_those_of_the_valid_positions_only() -> None:
    x = _t(3, 2, 5)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    valid = torch.cat([x[i, :, mask[i]] for i in range(3)], dim=1)  # (C, values)
    mean, var, n = BF.masked_moments(x, mask)
    assert int(n) == 9
    torch.testing.assert_close(mean, valid.mean(1))
    torch.testing.assert_close(var, valid.var(1, unbiased=False))


def test_pooling_groups_equals_the_statistics_of_their_concatenation() -> None:
    parts = [_t(n, 3, seed=n) for n in (2, 5, 9)]
    counts = torch.tensor([2.0, 5.0, 9.0], dtype=torch.float64)
    means = torch.stack([p.mean(0) for p in parts])
    m2s = torch.stack([p.var(0, unbiased=False) * len(p) for p in parts])
    total, mean, m2 = BF.pool(counts, means, m2s)
    everything = torch.cat(parts)
    assert float(total) == 16
    torch.testing.assert_close(mean, everything.mean(0))
    torch.testing.assert_close(m2 / total, everything.var(0, unbiased=False))
    # the same, one batch at a time
    count = torch.zeros((), dtype=torch.float64)
    mean1, m21 = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for p in parts:
        BF.pool_into(count, mean1, m21, len(p), p.mean(0), p.var(0, unbiased=False))
    assert float(count) == 16
    torch.testing.assert_close(mean1, everything.mean(0))
    torch.testing.assert_close(m21 / count, everything.var(0, unbiased=False))


def test_ghost_update_statistics_weight_each_group_by_its_count() -> None:
    parts = [_t(n, 3, seed=n) for n in (4, 4, 2)]
    means = torch.stack([p.mean(0) for p in parts])
    variances = torch.stack([p.var(0, unbiased=False) for p in parts])
    mean, var = BF.ghost_update_stats(means, variances, [4, 4, 2])
    torch.testing.assert_close(mean, (4 * means[0] + 4 * means[1] + 2 * means[2]) / 10)
    unbiased = [p.var(0) for p in parts]
    torch.testing.assert_close(var, (4 * unbiased[0] + 4 * unbiased[1] + 2 * unbiased[2]) / 10)


def test_renorm_limits_warm_up_then_ramp_linearly() -> None:
    def at(step: int) -> tuple[float, float]:
        r, d = BF.renorm_limits(step, 3.0, 5.0, warmup=10, ramp=20)
        return float(r), float(d)

    assert at(0) == at(9) == (1.0, 0.0)
    assert at(20) == pytest.approx((2.0, 2.5))
    assert at(30) == at(1000) == (3.0, 5.0)
    for step in (0, 9, 10, 17, 30, 45):  # the counter on the device gives the same limits
        r, d = BF.renorm_limits(torch.tensor(step), 3.0, 5.0, warmup=10, ramp=20)
        assert (float(r), float(d)) == pytest.approx(at(step))
    assert BF.renorm_limits(0, 3.0, 5.0, warmup=0, ramp=0) == (3.0, 5.0)
    assert BF.renorm_limits(4, 3.0, 5.0, warmup=5, ramp=0) == (1.0, 0.0)
    assert BF.renorm_limits(5, 3.0, 5.0, warmup=5, ramp=0) == (3.0, 5.0)


def test_renorm_correction_is_clipped_on_both_sides() -> None:
    running_mean = torch.zeros(4, dtype=torch.float64)
    running_var = torch.full((4,), 1 - 1e-5, dtype=torch.float64)  # running std exactly 1
    batch_mean = torch.tensor([0.5, 10.0, -10.0, 0.0], dtype=torch.float64)
    batch_var = torch.tensor([1.0, 100.0, 1e-4, 4.0], dtype=torch.float64) - 1e-5
    r, d = BF.renorm_correction(batch_mean, batch_var, running_mean, running_var, 1e-5, 3.0, 5.0)
    torch.testing.assert_close(r, torch.tensor([1.0, 3.0, 1 / 3, 2.0], dtype=torch.float64))
    torch.testing.assert_close(d, torch.tensor([0.5, 5.0, -5.0, 0.0], dtype=torch.float64))
    assert not r.requires_grad and not d.requires_grad


def test_renorm_fold_is_gamma_r_and_gamma_d_plus_beta() -> None:
    r, d, w, b = _t(3), _t(3, seed=1), _t(3, seed=2), _t(3, seed=3)
    torch.testing.assert_close(BF.renorm_fold(w, b, r, d), (w * r, w * d + b))
    torch.testing.assert_close(BF.renorm_fold(None, None, r, d), (r, d))
    torch.testing.assert_close(BF.renorm_fold(None, b, r, d), (r, d + b))


def test_prior_weight_and_mix() -> None:
    assert BF.prior_weight(16, 48) == 0.25
    assert BF.prior_weight(math.inf, 8) == 1.0
    assert BF.prior_weight(0, 8) == 0.0
    assert BF.prior_weight(0, 0) == 0.0
    rm, rv, bm, bv = _t(3), _t(3, seed=1).abs(), _t(3, seed=2), _t(3, seed=3).abs()
    mean, var = BF.prior_mix(0.25, rm, rv, bm, bv)
    torch.testing.assert_close(mean, 0.25 * rm + 0.75 * bm)
    torch.testing.assert_close(var, 0.25 * rv + 0.75 * bv)


def test_affine_normalize_and_normalize_agree_with_the_formula() -> None:
    x, mean, var = _t(4, 3, 2), _t(3, seed=1), _t(3, seed=2).abs()
    w, b = _t(3, seed=3), _t(3, seed=4)
    expected = (x - mean[:, None]) / torch.sqrt(var[:, None] + 1e-3) * w[:, None] + b[:, None]
    torch.testing.assert_close(BF.affine_normalize(x, mean, var, w, b, 1e-3), expected)
    torch.testing.assert_close(BF.normalize(x, mean, var, w, b, 1e-3), expected)
    plain = (x - mean[:, None]) / torch.sqrt(var[:, None] + 1e-3)
    torch.testing.assert_close(BF.affine_normalize(x, mean, var, None, None, 1e-3), plain)


def test_update_running_stats_with_a_tensor_factor_equals_the_float_one() -> None:
    x = _t(8, 3, 2)
    a = (torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    b = (a[0].clone(), a[1].clone())
    BF.update_running_stats(x, *a, 0.1)
    BF.update_running_stats(x, *b, torch.tensor(0.1, dtype=torch.float64))
    torch.testing.assert_close(a, b)
    flat = x.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(a[0], 0.1 * flat.mean(1))
    torch.testing.assert_close(a[1], 0.9 + 0.1 * flat.var(1))


def test_ghost_output_keeps_the_inputs_memory_format() -> None:
    x = torch.randn(8, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    y, _, _ = BF.ghost_normalize(x, None, None, 1e-5, [4, 4])
    native = F.batch_norm(x, None, None, None, None, True)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert native.is_contiguous(memory_format=torch.channels_last)


def test_snapshot_is_a_copy_that_compiles() -> None:
    t = torch.arange(3.0)
    s = BF.snapshot(t)
    assert torch.equal(s, t) and s.data_ptr() != t.data_ptr()
    compiled = torch.compile(lambda u: BF.snapshot(u) * 2, backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(t), t * 2)
