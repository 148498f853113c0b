"""Padded sequences: every policy computes its statistics over the valid positions only, equal
to the float64 reference run on the unpadded values; padded outputs stay finite."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from tests.helpers import randomize

import bnkit
from bnkit.errors import InputError
from bnkit.reference import reference_forward

POLICIES = {
    "pytorch": bnkit.preset("pytorch"),
    "frozen": bnkit.preset("frozen"),
    "batch_stats": bnkit.preset("batch_stats"),
    "adapt": bnkit.preset("adapt"),
    "renorm": bnkit.preset("renorm", r_max=1.5, d_max=0.5),
    "prior": bnkit.preset("prior", prior_strength=4.0, update="ema"),
    "prior_inf": bnkit.preset("prior", prior_strength=float("inf")),
    "cumulative": bnkit.Policy(update="cumulative"),
}
LENGTHS = torch.tensor([6, 2, 5, 3, 6])


def _padded(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, 3, 6, generator=g, dtype=torch.float64) * 2 + 1
    valid = torch.arange(6) < LENGTHS[:, None]
    x[~valid[:, None, :].expand_as(x)] = 1e4  # padding far from the data
    return x, valid


def _unpadded(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The valid positions as an (M, C) batch: what the reference normalizes."""
    return x.transpose(1, 2)[valid]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("name", [n for n in POLICIES if n != "prior"])
def test_masked_statistics_equal_the_reference_on_the_unpadded_values(
    name: str, training: bool
) -> None:
    policy = POLICIES[name]
    layer = randomize(nn.BatchNorm1d(3).double())
    pristine = copy.deepcopy(layer)
    bnkit.apply(layer, policy).train(training)
    x, valid = _padded()
    x.requires_grad_()
    with bnkit.mask(layer, valid):
        y = layer(x)
    flat = _unpadded(x.detach(), valid).requires_grad_()
    w = pristine.weight.detach().clone().requires_grad_()
    b = pristine.bias.detach().clone().requires_grad_()
    ref = reference_forward(
        policy, flat, training=training, weight=w, bias=b,
        running_mean=pristine.running_mean, running_var=pristine.running_var,
        num_batches_tracked=int(pristine.num_batches_tracked), momentum=pristine.momentum,
    )  # fmt: skip
    torch.testing.assert_close(_unpadded(y, valid), ref.output)
    assert bool(torch.isfinite(y).all())  # padded positions too
    assert ref.new_running_mean is not None and ref.new_running_var is not None
    torch.testing.assert_close(layer.running_mean, ref.new_running_mean)
    torch.testing.assert_close(layer.running_var, ref.new_running_var)
    assert int(layer.num_batches_tracked) == ref.new_num_batches_tracked
    dy = torch.randn_like(y)
    (y * dy).sum().backward()
    (ref.output * _unpadded(dy, valid)).sum().backward()
    assert x.grad is not None and flat.grad is not None
    # whatever gradient reaches the padding never flows into the valid positions
    torch.testing.assert_close(_unpadded(x.grad, valid), flat.grad)
    if policy.affine.value == "trainable":
        torch.testing.assert_close(layer.weight.grad, w.grad)


@pytest.mark.parametrize("strength", [1.0, 4.0])
def test_prior_mixing_under_a_mask_weighs_by_sequences(strength: float) -> None:  # not positions
    policy = bnkit.preset("prior", prior_strength=strength, update="ema")
    layer = bnkit.apply(randomize(nn.BatchNorm1d(3).double()), policy).train()
    pristine = copy.deepcopy(layer)
    x, valid = _padded()
    with bnkit.mask(layer, valid):
        y = layer(x)
    flat = _unpadded(x, valid)
    w = strength / (strength + len(LENGTHS))  # N / (N + sequences)
    mean = w * pristine.running_mean + (1 - w) * flat.mean(0)
    var = w * pristine.running_var + (1 - w) * flat.var(0, unbiased=False)
    expected = (flat - mean) / torch.sqrt(var + 1e-5) * pristine.weight + pristine.bias
    torch.testing.assert_close(_unpadded(y, valid), expected)


def test_ghost_batches_under_a_mask_use_each_groups_valid_positions() -> None:
    layer = bnkit.apply(nn.BatchNorm1d(3).double(), bnkit.preset("ghost", ghost_size=2)).train()
    x, valid = _padded()
    with bnkit.mask(layer, valid):
        y = layer(x)
    sizes = bnkit.functional.ghost_sizes(5, 2)
    start = 0
    for size in sizes:
        part, ok = x[start : start + size], valid[start : start + size]
        flat = _unpadded(part, ok)
        expected = (flat - flat.mean(0)) / torch.sqrt(flat.var(0, unbiased=False) + 1e-5)
        torch.testing.assert_close(_unpadded(y[start : start + size], ok), expected)
        start += size


def test_ghost_batches_under_a_mask_count_one_update() -> None:
    layer = bnkit.apply(nn.BatchNorm1d(3).double(), bnkit.preset("ghost", ghost_size=2)).train()
    x, valid = _padded()
    with bnkit.mask(layer, valid):
        layer(x)
    assert int(layer.num_batches_tracked) == 1


def test_one_valid_value_leaves_running_statistics_alone_where_none_are_needed() -> None:
    # normalizing with running statistics needs no batch statistics; one value per channel
    # gives no variance to fold in, so the update is skipped (no NaN/Inf warning, no count)
    layer = bnkit.apply(randomize(nn.BatchNorm1d(3).double()), "adapt").train()
    before = copy.deepcopy(layer)
    x, _ = _padded()
    valid = torch.zeros(5, 6, dtype=torch.bool)
    valid[2, 1] = True
    with bnkit.mask(layer, valid):
        y = layer(x)
    expected = (x - before.running_mean[:, None]) / torch.sqrt(before.running_var[:, None] + 1e-5)
    expected = expected * before.weight[:, None] + before.bias[:, None]
    torch.testing.assert_close(y[2, :, 1], expected[2, :, 1])
    assert torch.equal(layer.running_mean, before.running_mean)
    assert torch.equal(layer.running_var, before.running_var)
    assert int(layer.num_batches_tracked) == int(before.num_batches_tracked)


def test_padding_never_moves_a_statistic_and_the_layer_comes_back() -> None:
    model = nn.Sequential(nn.Conv1d(3, 4, 1), nn.BatchNorm1d(4), nn.ReLU())
    x, valid = _padded()
    x = x.float()
    clean = copy.deepcopy(model)
    with bnkit.mask(model, valid):
        model.train()(x)
    x2 = x.clone()
    x2[~valid[:, None, :].expand_as(x2)] = -7e4  # other padding: the same statistics
    with bnkit.mask(clean, valid):
        clean.train()(x2)
    torch.testing.assert_close(model[1].running_mean, clean[1].running_mean)
    assert type(model[1]) is nn.BatchNorm1d  # plain again after the block


def test_mask_errors_name_the_problem() -> None:
    layer = nn.BatchNorm1d(3)
    with (
        pytest.raises(InputError, match=r"needs an \(N, L\) bool tensor"),
        bnkit.mask(layer, torch.ones(5, 6)),
    ):
        pass
    x, valid = _padded()
    with bnkit.mask(layer, valid[:, :4]), pytest.raises(InputError, match="same N and L"):
        layer.train()(x.float())
    none_valid = torch.zeros_like(valid)
    with bnkit.mask(layer, none_valid), pytest.raises(InputError, match="more than 1 valid"):
        layer.train()(x.float())
    before = layer.running_mean.clone()
    assert torch.equal(layer.running_mean, before) and int(layer.num_batches_tracked) == 0
