"""What a layer brings keeps working under a policy: its momentum, a mix of frozen gamma/beta,
its stat bank; and an empty batch behaves as nn.BatchNorm's does."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from tests.helpers import assert_bitwise, managed_copy, native_twin, randomize, step

import bnkit


@pytest.mark.parametrize("momentum", [0.02, 0.01, 0.997, None])
@pytest.mark.parametrize("preset", ["pytorch", "frozen_affine", "ghost"])
def test_presets_that_name_no_momentum_keep_the_layers_own(
    momentum: float | None, preset: str
) -> None:
    layer = randomize(nn.BatchNorm1d(3, momentum=momentum))
    twin = copy.deepcopy(layer)
    if preset == "frozen_affine":
        twin.requires_grad_(False)
    bnkit.apply(layer, preset)
    assert layer.momentum == momentum
    for seed in range(3):  # ghost: one group per batch of 8, so plain BatchNorm
        x = torch.randn(8, 3)
        assert_bitwise(step(layer.train(), x, seed), step(twin.train(), x, seed))
    bnkit.unfreeze(layer)
    assert layer.momentum == momentum


def test_a_named_momentum_holds_while_the_policy_does() -> None:
    layer = nn.BatchNorm2d(3, momentum=0.02)
    bnkit.apply(layer, bnkit.preset("pytorch", momentum=0.3))
    assert layer.momentum == 0.3
    bnkit.apply(layer, "adapt")
    assert layer.momentum == 0.01
    bnkit.apply(layer, "frozen_affine")  # names none: the layer's own again
    assert layer.momentum == 0.02
    bnkit.apply(layer, bnkit.Policy(update="cumulative"))
    assert layer.momentum is None
    bnkit.unfreeze(layer)
    assert layer.momentum == 0.02


def test_the_layers_momentum_is_read_at_every_forward_as_pytorch_does() -> None:
    layer = bnkit.apply(randomize(nn.BatchNorm1d(3)), "pytorch")
    twin = native_twin(layer, bnkit.policy_of(layer), True)
    assert twin is not None
    layer.momentum = twin.momentum = 0.5
    x = torch.randn(8, 3)
    assert_bitwise(step(layer.train(), x), step(twin, x))


def test_a_layer_momentum_of_zero_means_no_update_and_is_reported_so() -> None:
    layer = randomize(nn.BatchNorm1d(3, momentum=0.0))
    bnkit.apply(layer, "pytorch")
    before = layer.running_mean.clone()
    layer.train()(torch.randn(8, 3))
    assert torch.equal(layer.running_mean, before)
    assert not bnkit.report(layer)[""].updates


def test_out_of_range_layer_momentum_is_refused_with_the_fix() -> None:
    layer = nn.BatchNorm1d(3, momentum=1.5)
    with pytest.raises(bnkit.LayerError, match=r"momentum=1.5, outside \[0, 1\].*name one"):
        bnkit.apply(layer, "pytorch")
    assert type(layer) is nn.BatchNorm1d
    bnkit.apply(layer, "adapt")  # names its own momentum: fine
    assert layer.momentum == 0.01


def test_freeze_takes_a_layer_with_only_gamma_frozen_and_unfreeze_brings_the_mix_back() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.BatchNorm1d(4))
    model[1].weight.requires_grad_(False)
    bnkit.freeze(model)
    assert bnkit.policy_of(model[1]) == bnkit.preset("frozen")
    assert not model[1].weight.requires_grad and not model[1].bias.requires_grad
    bnkit.unfreeze(model)
    assert (model[1].weight.requires_grad, model[1].bias.requires_grad) == (False, True)
    with pytest.raises(bnkit.LayerError, match="freezes both or neither"):
        bnkit.freeze(model, affine=False)  # the mix cannot be kept by a trainable policy
    assert bnkit.managed_layers(model) == []


def test_unfreeze_keeps_a_stat_bank_living_on_the_layer() -> None:
    layer = nn.BatchNorm1d(3)
    bank = bnkit.stat_bank(layer)
    bank.save("source")
    bnkit.freeze(layer)
    bnkit.unfreeze(layer)
    assert bnkit.stat_bank(layer) is bank and list(bank) == ["source"]


POLICIES = [
    bnkit.preset(name)
    for name in ("pytorch", "frozen", "frozen_stats", "batch_stats", "adapt", "renorm", "ghost")
] + [bnkit.preset("prior"), bnkit.Policy(update="cumulative")]


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 5), (0, 3, 2, 2), (4, 3, 0)])
def test_an_empty_batch_gives_an_empty_output_and_leaves_the_statistics(
    policy: bnkit.Policy, training: bool, shape: tuple[int, ...]
) -> None:
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d}[len(shape)]
    layer = randomize(cls(3))
    twin = native_twin(layer, policy, training)
    fresh = managed_copy(layer, policy).train(training)
    bnkit.apply(layer, policy).train(training)
    x = torch.randn(*shape, requires_grad=True)
    before = (layer.running_mean.clone(), layer.running_var.clone())
    count = int(layer.num_batches_tracked)
    y = layer(x)
    assert y.shape == x.shape and bool(torch.isfinite(y).all())
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert torch.equal(layer.running_mean, before[0]) and torch.equal(layer.running_var, before[1])
    assert int(layer.num_batches_tracked) == count + int(policy.updates(training))
    if twin is not None:  # where nn.BatchNorm can express the policy: the very same numbers
        assert_bitwise(step(fresh, x.detach()), step(twin, x.detach()))
