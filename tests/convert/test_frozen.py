"""Frozen exports: bitwise eval BatchNorm, torchvision's keys, lossless round trips."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers import BN_FOR_DIM, make_layer, randomize
from tests.nets import small_cnn
from torch.nn.modules.batchnorm import _BatchNorm

import bnkit

FROZEN_FOR_DIM = {
    2: bnkit.convert.FrozenBatchNorm1d,
    3: bnkit.convert.FrozenBatchNorm1d,
    4: bnkit.convert.FrozenBatchNorm2d,
    5: bnkit.convert.FrozenBatchNorm3d,
}


@given(
    dim=st.sampled_from([2, 3, 4, 5]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    affine=st.booleans(),
    channels_last=st.booleans(),
    eps=st.sampled_from([1e-5, 1e-3]),
)
def test_frozen_output_is_eval_batchnorm_bit_for_bit(
    dim: int, dtype: torch.dtype, affine: bool, channels_last: bool, eps: float
) -> None:
    layer = make_layer(dim, 3, dtype=dtype, affine=affine, eps=eps).eval()
    frozen = bnkit.to_frozen(copy.deepcopy(layer))
    assert type(frozen) is FROZEN_FOR_DIM[dim]
    x = torch.randn((4, 3, 5, 6, 7)[:dim], dtype=dtype)
    if channels_last and dim == 4:
        x = x.to(memory_format=torch.channels_last)
    xg = x.clone().requires_grad_(True)
    y = frozen(xg)
    assert torch.equal(y, layer(x))
    y.sum().backward()
    assert xg.grad is not None and not list(frozen.parameters())
    assert bnkit.policy_of(frozen) == bnkit.preset("frozen")


def test_state_dict_has_torchvision_keys_and_loads_batchnorm_checkpoints() -> None:
    frozen = bnkit.convert.FrozenBatchNorm2d(4)
    assert list(frozen.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    source = randomize(nn.BatchNorm2d(4))
    frozen.load_state_dict(source.state_dict(), strict=True)  # num_batches_tracked ignored
    x = torch.randn(2, 4, 3, 3)
    assert torch.equal(frozen(x), source.eval()(x))
    assert repr(frozen) == "FrozenBatchNorm2d(4, eps=1e-05)"


def test_round_trip_gives_back_the_very_layers() -> None:
    model = small_cnn().train()
    bnkit.apply(model, "frozen_stats", where="4")
    model[9].momentum = None
    model[1].requires_grad_(False)
    model[1].eval()
    layers = {n: m for n, m in model.named_modules() if isinstance(m, _BatchNorm)}
    params = {n: (m.weight, m.bias) for n, m in layers.items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bnkit.to_frozen(model)
    convert = bnkit.convert
    assert [type(model[i]) for i in (1, 4, 9)] == [
        convert.FrozenBatchNorm2d, convert.FrozenBatchNorm2d, convert.FrozenBatchNorm1d
    ]  # fmt: skip
    assert model[1].training is False and model[4].training is True
    bnkit.from_frozen(model)
    for name, layer in layers.items():
        assert model.get_submodule(name) is layer
        assert (layer.weight, layer.bias) == params[name]
    assert model[1].training is False and model[4].training is True
    assert not model[1].weight.requires_grad and model[4].weight.requires_grad
    assert model[9].momentum is None
    assert bnkit.managed_layers(model) == [("4", bnkit.preset("frozen_stats"))]
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_changes_to_the_frozen_model_carry_back() -> None:
    model = bnkit.to_frozen(small_cnn())
    bnkit.load_stats(model, bnkit.capture_stats(small_cnn(seed=3)))
    new = randomize(nn.BatchNorm2d(6), seed=11)
    model[1].load_state_dict(new.state_dict())
    model = model.double()
    bnkit.from_frozen(model)
    assert model[1].weight.dtype == torch.float64
    assert torch.equal(model[1].weight, new.weight.double())
    assert torch.equal(model[4].running_var, small_cnn(seed=3)[4].running_var.double())
    assert int(model[1].num_batches_tracked) == 3  # the counter of the original layer


def test_pickled_frozen_models_still_revert() -> None:
    model = bnkit.to_frozen(small_cnn())
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = bnkit.from_frozen(torch.load(buf, weights_only=False))
    for (name, a), b in zip(
        small_cnn().state_dict().items(), loaded.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_layers_built_as_frozen_revert_to_plain_batchnorm() -> None:
    model = nn.Sequential(bnkit.convert.FrozenBatchNorm3d(2, eps=1e-3))
    model[0].running_var.fill_(4.0)
    bnkit.from_frozen(model)
    layer = model[0]
    assert type(layer) is nn.BatchNorm3d and layer.eps == 1e-3 and layer.momentum == 0.1
    assert torch.equal(layer.running_var, torch.full((2,), 4.0))
    assert int(layer.num_batches_tracked) == 0
    with pytest.raises(bnkit.LayerError, match="1d/2d/3d"):
        bnkit.from_frozen(nn.Sequential(bnkit.convert.FrozenBatchNorm(2)))


def test_what_cannot_be_frozen_or_unfrozen() -> None:
    class WithActivation(nn.BatchNorm1d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(super().forward(x))

    model = nn.Sequential(nn.BatchNorm1d(2), WithActivation(2))
    with pytest.raises(bnkit.LayerError, match="own forward would be dropped"):
        bnkit.to_frozen(model)
    assert type(model[0]) is nn.BatchNorm1d  # nothing changed
    bnkit.to_frozen(model, where="0")
    no_stats = nn.Sequential(nn.BatchNorm1d(2, track_running_stats=False))
    assert type(bnkit.to_frozen(no_stats)[0]) is nn.BatchNorm1d  # skipped
    with pytest.raises(bnkit.LayerError, match="no running statistics"):
        bnkit.to_frozen(no_stats, where="0")
    plain = bnkit.to_frozen(nn.Sequential(nn.BatchNorm1d(2, affine=False)))
    plain[0].weight.fill_(2.0)
    with pytest.raises(bnkit.LayerError, match="affine=False"):
        bnkit.from_frozen(plain)
    with pytest.raises(bnkit.InputError, match="'0' expected 2D or 3D input with 2 channels"):
        plain[0](torch.randn(2, 2, 3, 3))


def test_frozen_layers_refuse_policies_and_sync() -> None:
    model = bnkit.to_frozen(small_cnn())
    with pytest.raises(bnkit.LayerError, match="from_frozen"):
        bnkit.apply(model, "pytorch", where="1")
    with pytest.raises(bnkit.LayerError, match="from_frozen"):
        bnkit.to_sync(model, where="1")
    bnkit.to_sync(model)  # skipped with where=None
    assert type(model[1]) is bnkit.convert.FrozenBatchNorm2d


@pytest.mark.parametrize("dim", [2, 4, 5])
def test_a_lone_layer_is_replaced_and_returned(dim: int) -> None:
    layer = BN_FOR_DIM[dim](3)
    frozen = bnkit.to_frozen(layer)
    assert isinstance(frozen, bnkit.convert.FrozenBatchNorm) and bnkit.from_frozen(frozen) is layer


def test_a_layer_registered_twice_in_one_parent_is_exported_under_both_names() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.BatchNorm1d(3)
            self.b = self.a  # one layer, two names

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x))

    model = Twice().eval()
    x = torch.randn(4, 3)
    expected = model(x)
    bnkit.to_frozen(model)
    assert type(model.a) is bnkit.convert.FrozenBatchNorm1d and model.b is model.a
    assert torch.equal(model(x), expected)
