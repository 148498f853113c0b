"""apply / freeze / unfreeze / using / policy_of on real models."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from tests.helpers import randomize

import bnkit
from bnkit.errors import LayerError, PolicyError, SelectionError


class Block(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(Block(3, 8), Block(8, 8))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 6), nn.BatchNorm1d(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def pretrained() -> Net:
    net = Net()
    for i, m in enumerate(net.modules()):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            randomize(m, seed=i)
    return net


def bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "tracked" in k}


def test_frozen_survives_train_and_matches_pretrained_eval() -> None:
    net = pretrained()
    x = torch.randn(4, 3, 4, 4)
    expected = copy.deepcopy(net).eval()(x)
    bnkit.apply(net, "frozen")
    before = bn_state(net)
    for _ in range(3):
        net.train()
        out = net(x)
        net.eval()
        net.train()
    assert torch.equal(out, expected)
    after = bn_state(net)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_optimizer_built_before_apply_trains_the_same_tensors() -> None:
    net = pretrained()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    ids = [id(p) for p in net.parameters()] + [id(b) for b in net.buffers()]
    bnkit.apply(net, "frozen_stats")
    assert ids == [id(p) for p in net.parameters()] + [id(b) for b in net.buffers()]
    gamma = net.backbone[0].bn.weight.detach().clone()
    stats = bn_state(net)
    net.train()
    net(torch.randn(4, 3, 4, 4)).square().mean().backward()
    opt.step()
    assert not torch.equal(net.backbone[0].bn.weight, gamma)
    assert all(torch.equal(stats[k], v) for k, v in bn_state(net).items())


def test_state_dict_loads_strict_both_ways() -> None:
    plain = pretrained()
    managed = bnkit.apply(copy.deepcopy(plain), "adapt")
    assert list(managed.state_dict()) == list(plain.state_dict())
    fresh_plain, fresh_managed = Net(), bnkit.apply(Net(), "frozen")
    fresh_plain.load_state_dict(managed.state_dict(), strict=True)
    fresh_managed.load_state_dict(plain.state_dict(), strict=True)
    for a, b in zip(
        fresh_plain.state_dict().values(), fresh_managed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)
    assert bnkit.policy_of(fresh_managed.head[2]) == bnkit.preset("frozen")


def test_deepcopy_and_pickle_keep_the_policy() -> None:
    net = bnkit.apply(pretrained(), bnkit.preset("adapt", momentum=0.003))
    clone = copy.deepcopy(net)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = torch.randn(4, 3, 4, 4)
    for other in (clone, loaded):
        assert bnkit.policy_of(other.backbone[1].bn) == bnkit.preset("adapt", momentum=0.003)
        assert other.backbone[1].bn.running_mean is not net.backbone[1].bn.running_mean
        assert torch.equal(copy.deepcopy(net)(x), other(x))


def test_repr_shows_the_policy_and_the_managed_class_name() -> None:
    net = bnkit.apply(pretrained(), "frozen", where="head")
    assert type(net.head[2]).__name__ == "ManagedBatchNorm1d"
    assert repr(net.head[2]).startswith("ManagedBatchNorm1d(")  # repr and type() agree
    assert isinstance(net.head[2], nn.BatchNorm1d)
    assert bnkit.layers.original_class(net.head[2]) is nn.BatchNorm1d
    assert "policy=bnkit.preset('frozen')" in repr(net.head[2])
    assert "policy" not in repr(net.backbone[0].bn)


class BNReLU(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x))


class ForeignBN(nn.BatchNorm2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # reimplements, never calls super
        return F.batch_norm(
            x, self.running_mean, self.running_var, self.weight, self.bias, self.training
        )


def test_subclass_with_activation_keeps_it() -> None:
    layer = randomize(BNReLU(4))
    reference = copy.deepcopy(layer).eval()
    bnkit.apply(layer, "frozen").train()
    x = torch.randn(3, 4, 5, 5)
    y = layer(x)
    assert torch.equal(y, reference(x))
    assert (y >= 0).all()
    assert type(layer).__name__ == "ManagedBNReLU"
    assert isinstance(layer, BNReLU)


def test_subclass_that_bypasses_batchnorm_forward_is_refused_at_apply() -> None:
    layer = randomize(ForeignBN(4))
    with pytest.raises(LayerError, match=r"computes BatchNorm itself.*register_layer\(ForeignBN"):
        bnkit.apply(layer, "frozen")
    assert type(layer) is ForeignBN and bnkit.managed_layers(layer) == []


def test_lazy_batchnorm_needs_materializing_first() -> None:
    lazy = nn.LazyBatchNorm2d()
    with pytest.raises(LayerError, match="unmaterialized LazyBatchNorm2d; run one forward"):
        bnkit.apply(lazy, "frozen")
    lazy(torch.randn(2, 5, 3, 3))
    bnkit.apply(lazy, "frozen")
    assert bnkit.policy_of(lazy) == bnkit.preset("frozen")
    assert lazy(torch.randn(1, 5, 3, 3)).shape == (1, 5, 3, 3)


def test_syncbatchnorm_without_process_group_matches_native() -> None:
    layer = randomize(nn.SyncBatchNorm(4))
    twin = copy.deepcopy(layer)
    bnkit.apply(layer, "pytorch")
    x = torch.randn(3, 4, 5, 5)
    assert torch.equal(layer(x), twin(x))
    assert torch.equal(layer.running_var, twin.running_var)  # type: ignore[arg-type]
    assert isinstance(layer, nn.SyncBatchNorm)


def test_where_selects_by_glob_ancestor_type_and_predicate() -> None:
    def chosen(where: bnkit.layers.Where) -> list[str]:
        net = bnkit.apply(pretrained(), "frozen", where=where)
        return [name for name, _ in bnkit.managed_layers(net)]

    assert chosen("backbone") == ["backbone.0.bn", "backbone.1.bn"]
    assert chosen("backbone.*") == ["backbone.0.bn", "backbone.1.bn"]
    assert chosen("*.1.bn") == ["backbone.1.bn"]
    assert chosen(nn.BatchNorm1d) == ["head.2"]
    assert chosen(lambda name, layer: layer.num_features == 6) == ["head.2"]


def test_empty_selection_is_an_error_that_lists_the_layers() -> None:
    with pytest.raises(SelectionError, match=r"matches no BatchNorm layer.*'backbone\.0\.bn'"):
        bnkit.apply(pretrained(), "frozen", where="neck.*")
    with pytest.raises(SelectionError, match="the model has no BatchNorm layer"):
        bnkit.apply(nn.Linear(2, 2), "frozen")


def test_nothing_changes_when_one_selected_layer_cannot_take_the_policy() -> None:
    net = nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm1d(3, track_running_stats=False))
    with pytest.raises(LayerError, match="has no running statistics"):
        bnkit.apply(net, "frozen")
    assert bnkit.managed_layers(net) == []


def test_freeze_variants_equal_the_presets() -> None:
    assert bnkit.policy_of(bnkit.freeze(nn.BatchNorm2d(2))) == bnkit.preset("frozen")
    layer = bnkit.freeze(nn.BatchNorm2d(2), affine=False)
    assert bnkit.policy_of(layer) == bnkit.preset("frozen_stats")
    layer = bnkit.freeze(nn.BatchNorm2d(2), stats=False)
    assert bnkit.policy_of(layer) == bnkit.preset("frozen_affine")
    with pytest.raises(PolicyError, match="freezes nothing"):
        bnkit.freeze(nn.BatchNorm2d(2), stats=False, affine=False)


def test_freeze_keeps_the_other_axes() -> None:
    layer = bnkit.apply(nn.BatchNorm2d(2), "adapt")
    bnkit.freeze(layer, stats=False)
    assert bnkit.policy_of(layer) == bnkit.preset("adapt").replace(affine="frozen")


def test_unfreeze_restores_everything() -> None:
    layer = nn.BatchNorm2d(3, momentum=0.3)
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    text = repr(layer)
    bnkit.apply(layer, "adapt")
    assert layer.momentum == 0.01  # adapt names a momentum: it holds while the policy does
    bnkit.apply(layer, "pytorch")
    assert layer.momentum == 0.3 and layer.weight.requires_grad  # pytorch keeps the layer's own
    bnkit.unfreeze(layer)
    assert type(layer) is nn.BatchNorm2d
    assert layer.momentum == 0.3
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    assert repr(layer) == text
    assert not [k for k in vars(layer) if k.startswith("_bnkit")]
    assert bnkit.policy_of(layer) == bnkit.preset("frozen_affine")


def test_using_restores_previous_policies_also_on_exception() -> None:
    net = bnkit.apply(pretrained(), "frozen", where="head")
    with bnkit.using(net, "batch_stats"):
        assert {p for _, p in bnkit.managed_layers(net)} == {bnkit.preset("batch_stats")}
        with bnkit.using(net, "adapt", where="backbone.0"):
            assert bnkit.policy_of(net.backbone[0].bn) == bnkit.preset("adapt")
        assert bnkit.policy_of(net.backbone[0].bn) == bnkit.preset("batch_stats")
    assert [n for n, _ in bnkit.managed_layers(net)] == ["head.2"]
    assert type(net.backbone[0].bn) is nn.BatchNorm2d
    with pytest.raises(RuntimeError, match="boom"), bnkit.using(net, "adapt"):
        raise RuntimeError("boom")
    assert bnkit.policy_of(net.head[2]) == bnkit.preset("frozen")
    assert type(net.backbone[1].bn) is nn.BatchNorm2d


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: nn.BatchNorm2d(2), bnkit.preset("pytorch")),
        (lambda: nn.BatchNorm2d(2, momentum=None), bnkit.Policy(update="cumulative")),
        (lambda: nn.BatchNorm2d(2, momentum=0.0), bnkit.Policy(update="never")),
        (lambda: nn.BatchNorm2d(2, track_running_stats=False), bnkit.preset("batch_stats")),
        (lambda: nn.BatchNorm2d(2).requires_grad_(False), bnkit.preset("frozen_affine")),
        (lambda: nn.BatchNorm2d(2, affine=False), bnkit.preset("pytorch")),
    ],
)
def test_policy_of_reads_native_flags(build: object, expected: bnkit.Policy) -> None:
    assert bnkit.policy_of(build()) == expected  # type: ignore[operator]


def test_policy_of_flipped_track_running_stats_and_mixed_grads() -> None:
    layer = nn.BatchNorm2d(2)
    layer.track_running_stats = False
    assert bnkit.policy_of(layer) == bnkit.Policy(update="never")
    layer.bias.requires_grad_(False)
    with pytest.raises(LayerError, match="freezes both or neither"):
        bnkit.policy_of(layer)
    with pytest.raises(LayerError, match="expected a BatchNorm layer"):
        bnkit.policy_of(nn.Linear(2, 2))


def test_frozen_affine_policy_wins_over_later_requires_grad() -> None:
    layer = bnkit.apply(randomize(nn.BatchNorm1d(3)), "frozen_affine")
    layer.requires_grad_(True)
    layer(torch.randn(4, 3, requires_grad=True)).sum().backward()
    assert layer.weight.grad is None


def test_model_wide_calls_skip_frozen_exports() -> None:
    net = pretrained()
    bnkit.to_frozen(net, where="head")
    bnkit.freeze(net)  # the frozen export is fixed by nature: skipped, not an error
    assert [n for n, _ in bnkit.managed_layers(net)] == ["backbone.0.bn", "backbone.1.bn"]
    with pytest.raises(LayerError, match="cannot give a policy"):
        bnkit.apply(net, "frozen", where="head")
    with pytest.raises(LayerError, match="every BatchNorm layer of the model is a frozen export"):
        bnkit.apply(bnkit.to_frozen(pretrained()), "pytorch")
