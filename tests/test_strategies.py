"""Batch renormalization, ghost batches and prior mixing: their limits, their numbers."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from tests.helpers import assert_bitwise, make_layer, managed_copy, randomize, step

import bnkit


def _x(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 2 + 1


@pytest.mark.parametrize("dim", [2, 4])
def test_renorm_with_unit_limits_is_plain_batchnorm_bit_for_bit(dim: int) -> None:
    layer = make_layer(dim, 3)
    ours = managed_copy(layer, bnkit.preset("renorm", r_max=1.0, d_max=0.0, momentum=0.1))
    native = copy.deepcopy(layer).train()
    shape = (8, 3) if dim == 2 else (4, 3, 5, 5)
    for seed in range(3):
        assert_bitwise(step(ours.train(), _x(shape, seed)), step(native, _x(shape, seed)))


def test_renorm_corrects_toward_running_statistics() -> None:
    layer = make_layer(2, 3)  # running mean ~N(0,1), running var in [0.5, 1.5]
    policy = bnkit.preset("renorm", r_max=1.5, d_max=0.5)
    ours = managed_copy(layer, policy).train()
    x = (_x((16, 3)) * 4 + 3).requires_grad_(True)  # far from the running statistics
    ref = bnkit.reference.reference_step(ours, x)
    r, d = ref.details["r"], ref.details["d"]
    assert (r == 1.5).all() and (d.abs() == 0.5).any()  # the clipping is active
    y = ours(x)
    torch.testing.assert_close(y.double(), ref.output.detach(), rtol=1e-5, atol=1e-5)
    # no gradient flows through r and d: d/dgamma = sum(dy * (x̂_B r + d))
    y.sum().backward()
    x_hat = (x.detach().double() - ref.batch_mean) / torch.sqrt(ref.batch_var + layer.eps)
    expected = (x_hat * r + d).sum(0)
    torch.testing.assert_close(ours.weight.grad.double(), expected, rtol=1e-5, atol=1e-5)  # type: ignore[union-attr]
    torch.testing.assert_close(ours.running_mean.double(), ref.new_running_mean)  # type: ignore[union-attr]


def test_renorm_limits_follow_the_schedule() -> None:
    policy = bnkit.preset("renorm", r_max=3.0, d_max=4.0, renorm_warmup=2, renorm_ramp=4)
    layer = managed_copy(make_layer(2, 2), policy).train()
    layer.num_batches_tracked.zero_()  # type: ignore[union-attr]
    seen = []
    for _ in range(8):
        step_ref = bnkit.reference.reference_step(layer, _x((6, 2)) * 10)
        seen.append((step_ref.details["r_limit"], step_ref.details["d_limit"]))
        out = layer(_x((6, 2)) * 10).double()
        torch.testing.assert_close(out, step_ref.output.detach(), rtol=1e-5, atol=1e-5)
    assert (
        seen
        == [(1.0, 0.0), (1.0, 0.0), (1.0, 0.0), (1.5, 1.0), (2.0, 2.0), (2.5, 3.0)]
        + [(3.0, 4.0)] * 2
    )


def test_ghost_batches_normalize_each_group_by_itself() -> None:
    layer = make_layer(4, 3)
    ours = managed_copy(layer, bnkit.preset("ghost", ghost_size=4)).train()
    x = _x((10, 3, 2, 2))  # groups of 4, 4 and 2 samples
    y = ours(x)
    parts = [F.batch_norm(c, None, None, layer.weight, layer.bias, True) for c in x.split(4)]
    torch.testing.assert_close(y, torch.cat(parts), rtol=1e-5, atol=1e-6)
    # one update, with the size-weighted means of the groups' means and unbiased variances
    counts = torch.tensor([16.0, 16.0, 8.0])
    means = torch.stack([c.mean((0, 2, 3)) for c in x.split(4)])
    unbiased = torch.stack([c.transpose(0, 1).reshape(3, -1).var(1) for c in x.split(4)])
    mean = (means * counts[:, None]).sum(0) / counts.sum()
    var = (unbiased * counts[:, None]).sum(0) / counts.sum()
    torch.testing.assert_close(ours.running_mean, 0.9 * layer.running_mean + 0.1 * mean)  # type: ignore[operator]
    torch.testing.assert_close(ours.running_var, 0.9 * layer.running_var + 0.1 * var)  # type: ignore[operator]
    assert int(ours.num_batches_tracked) == int(layer.num_batches_tracked) + 1  # type: ignore[arg-type]


def test_one_ghost_batch_is_plain_batchnorm_bit_for_bit() -> None:
    layer = make_layer(4, 3)
    ours = managed_copy(layer, bnkit.preset("ghost", ghost_size=8)).train()
    native = copy.deepcopy(layer).train()
    assert_bitwise(step(ours, _x((8, 3, 3, 3))), step(native, _x((8, 3, 3, 3))))


@pytest.mark.parametrize("preset", ["renorm", "ghost"])
def test_train_time_strategies_use_running_statistics_in_eval(preset: str) -> None:
    layer = make_layer(4, 3)
    ours = managed_copy(layer, preset).eval()
    x = _x((4, 3, 2, 2))
    assert torch.equal(ours(x), copy.deepcopy(layer).eval()(x))


def test_prior_limits_are_batch_and_running_statistics_bit_for_bit() -> None:
    layer = make_layer(4, 3)
    x = _x((6, 3, 4, 4))
    batch = managed_copy(layer, "batch_stats")
    prior0 = managed_copy(layer, bnkit.preset("prior", prior_strength=0.0))
    assert_bitwise(step(prior0, x), step(batch, x))
    running = managed_copy(layer, "frozen_stats")
    prior_inf = managed_copy(layer, bnkit.preset("prior", prior_strength=math.inf))
    assert_bitwise(step(prior_inf, x), step(running, x))


@pytest.mark.parametrize("strength", [1.0, 6.0, 50.0])
def test_prior_mixing_weight_and_gradients_match_the_reference(strength: float) -> None:
    layer = make_layer(4, 3)
    ours = managed_copy(layer, bnkit.preset("prior", prior_strength=strength)).train()
    x = _x((6, 3, 4, 4)).requires_grad_(True)
    xr = x.detach().clone().requires_grad_(True)
    ref = bnkit.reference.reference_step(ours, xr)
    assert ref.details["weight"] == pytest.approx(strength / (strength + 6))
    y = ours(x)
    torch.testing.assert_close(y.double(), ref.output.detach(), rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    ref.output.backward(g.double())
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-5)


def test_prior_improves_on_batch_statistics_for_a_single_sample() -> None:
    # A model trained on one domain, one test sample at a time: batch statistics of a single
    # sample destroy the signal, the prior keeps it.
    torch.manual_seed(0)
    bn = randomize(nn.BatchNorm2d(4)).eval()
    x = torch.randn(1, 4, 3, 3) * bn.running_var.sqrt().view(1, -1, 1, 1)  # type: ignore[union-attr]
    x = x + bn.running_mean.view(1, -1, 1, 1)  # type: ignore[union-attr]
    target = bn(x)
    with bnkit.using(bn, "batch_stats"):
        batch_err = (bn(x) - target).abs().mean()
    with bnkit.using(bn, "prior"):
        prior_err = (bn(x) - target).abs().mean()
    assert prior_err < 0.5 * batch_err


def test_strategy_parameters_are_validated() -> None:
    with pytest.raises(bnkit.PolicyError, match="r_max must be a finite float >= 1"):
        bnkit.preset("renorm", r_max=0.5)
    with pytest.raises(bnkit.PolicyError, match="ghost_size only applies to normalize='ghost'"):
        bnkit.preset("pytorch", ghost_size=8)
    with pytest.raises(bnkit.PolicyError, match="prior_strength must be a float >= 0"):
        bnkit.preset("prior", prior_strength=-1.0)
    assert repr(bnkit.preset("prior", prior_strength=math.inf)) == (
        "bnkit.preset('prior', prior_strength=math.inf)"
    )


@pytest.mark.parametrize(("n", "sizes"), [(17, [9, 8]), (40, [14, 14, 12]), (33, [11, 11, 11])])
def test_ghost_groups_split_as_tabnet_does_so_no_group_is_left_with_one_sample(
    n: int, sizes: list[int]
) -> None:
    from pytorch_tabnet.tab_network import GBN

    assert bnkit.functional.ghost_sizes(n, 16) == sizes
    gbn = GBN(5, virtual_batch_size=16, momentum=0.1).train()
    randomize(gbn.bn)
    ours = managed_copy(gbn.bn, bnkit.preset("ghost", ghost_size=16)).train()
    x = _x((n, 5))
    assert torch.equal(ours(x), gbn(x))  # each group on the same kernel: bit for bit
    ref = bnkit.reference.reference_step(copy.deepcopy(gbn.bn), x, policy=bnkit.policy_of(ours))
    assert ref.details["sizes"] == sizes


def test_a_one_sample_ghost_group_names_a_ghost_size_that_works() -> None:
    layer = bnkit.apply(nn.BatchNorm1d(3), bnkit.preset("ghost", ghost_size=2)).train()
    before = layer.running_mean.clone()
    with pytest.raises(
        bnkit.InputError, match=r"groups of 2, 2 and 1.*ghost_size=3 for batches of 5"
    ):
        layer(torch.randn(5, 3))
    assert torch.equal(layer.running_mean, before) and int(layer.num_batches_tracked) == 0
    layer(torch.randn(6, 3))  # 2, 2 and 2: fine


@pytest.mark.parametrize(("n", "ghost"), [(256, 8), (40, 16), (64, 16), (10, 4)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_many_ghost_batches_of_a_2d_input_match_one_batchnorm_per_group_bit_for_bit(
    n: int, ghost: int, affine: bool, dtype: torch.dtype
) -> None:
    # ghost batches are TabNet's: each group on its own BatchNorm call, gradients included
    layer = nn.BatchNorm1d(6, affine=affine).to(dtype)
    randomize(layer)
    ours = managed_copy(layer, bnkit.preset("ghost", ghost_size=ghost)).train()
    x = _x((n, 6)).to(dtype).requires_grad_()
    y = ours(x)
    dy = _x((n, 6), seed=1).to(dtype)
    y.backward(dy)
    sizes = bnkit.functional.ghost_sizes(n, ghost)
    xs = [c.detach().clone().requires_grad_() for c in x.detach().split(sizes)]
    native = [copy.deepcopy(layer).train() for _ in sizes]
    parts = [bn(c) for bn, c in zip(native, xs, strict=True)]
    torch.autograd.backward(parts, list(dy.split(sizes)))
    assert torch.equal(y, torch.cat(parts))
    assert x.grad is not None
    assert torch.equal(x.grad, torch.cat([c.grad for c in xs]))  # type: ignore[misc]
    if affine:
        for name in ("weight", "bias"):
            grads = [getattr(bn, name).grad for bn in native]
            assert torch.equal(getattr(ours, name).grad, torch.stack(grads).sum(0))
    # each group's statistics, as its own BatchNorm saw them, folded once into the running ones
    means = torch.stack([c.detach().mean(0) for c in xs])
    variances = torch.stack([c.detach().var(0, unbiased=False) for c in xs])
    mean, var = bnkit.functional.ghost_update_stats(means, variances, sizes)
    torch.testing.assert_close(ours.running_mean, 0.9 * layer.running_mean + 0.1 * mean)  # type: ignore[operator]
    torch.testing.assert_close(ours.running_var, 0.9 * layer.running_var + 0.1 * var)  # type: ignore[operator]


@pytest.mark.parametrize("masked", [False, True])
def test_renorm_on_a_layer_without_a_counter_stays_at_its_first_steps_limits(
    masked: bool,
) -> None:
    # no num_batches_tracked: every forward is the first, so warmup never ends (plain BatchNorm)
    layer = nn.BatchNorm1d(3)
    randomize(layer)
    layer.num_batches_tracked = None
    ours = bnkit.apply(
        copy.deepcopy(layer), bnkit.preset("renorm", r_max=3.0, d_max=5.0, renorm_warmup=1)
    ).train()
    x = _x((8, 3, 4)) * 3
    if masked:
        with bnkit.mask(ours, torch.ones(8, 4, dtype=torch.bool)):
            y = ours(x)
    else:
        y = ours(x)
    expected = F.batch_norm(x, None, None, layer.weight, layer.bias, True)
    torch.testing.assert_close(y, expected)
