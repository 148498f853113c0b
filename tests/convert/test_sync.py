"""to_sync / from_sync: same tensors and flags, policies and subclass behaviour kept, reverted."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn
from tests.helpers import randomize
from tests.nets import small_cnn
from torch import Tensor

import bnkit


class WithActivation(nn.BatchNorm2d):
    """A subclass whose forward adds an activation (module level: picklable)."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(super().forward(x)) * 2.0


def model() -> nn.Sequential:
    net = small_cnn()
    net[4] = randomize(WithActivation(5), seed=4)
    return net


def test_layers_become_sync_batchnorm_and_compute_the_same() -> None:
    net = model().train()
    reference = copy.deepcopy(net)
    net[1].eval()
    reference[1].eval()
    net[9].requires_grad_(False)
    tensors = [id(t) for t in (*net.parameters(), *net.buffers())]
    bnkit.to_sync(net)
    assert type(net[1]) is nn.SyncBatchNorm and type(net[9]) is nn.SyncBatchNorm
    assert isinstance(net[4], nn.SyncBatchNorm) and isinstance(net[4], WithActivation)
    assert tensors == [id(t) for t in (*net.parameters(), *net.buffers())]
    assert not net[1].training and net[4].training and not net[9].weight.requires_grad
    x = torch.randn(8, 3, 8, 8)
    assert torch.equal(net(x), reference(x))  # no process group: local statistics
    assert torch.equal(net[4].running_mean, reference[4].running_mean)
    assert repr(type(net[4])) == f"<class '{__name__}.WithActivation' (synchronized)>"
    bnkit.from_sync(net)
    assert [type(net[i]) for i in (1, 4, 9)] == [nn.BatchNorm2d, WithActivation, nn.BatchNorm1d]
    assert tensors == [id(t) for t in (*net.parameters(), *net.buffers())]
    assert not hasattr(net[1], "process_group")


def test_policies_survive_the_round_trip() -> None:
    net = model()
    bnkit.apply(net, "frozen_stats", where="4")
    bnkit.apply(net, "adapt", where="1")
    bnkit.to_sync(net, process_group=None)
    assert bnkit.managed_layers(net) == [
        ("1", bnkit.preset("adapt")),
        ("4", bnkit.preset("frozen_stats")),
    ]
    x = torch.randn(4, 3, 8, 8)
    y = net.train()(x)
    assert y.shape == (4, 4) and net[4](torch.randn(2, 5, 3, 3)).min() >= 0  # activation kept
    bnkit.unfreeze(net, where="1")
    assert type(net[1]) is nn.SyncBatchNorm  # unmanaged, still synchronized
    bnkit.from_sync(net)
    assert type(net[1]) is nn.BatchNorm2d
    assert bnkit.managed_layers(net) == [("4", bnkit.preset("frozen_stats"))]
    bnkit.unfreeze(net)
    assert type(net[4]) is WithActivation


def test_synchronized_models_pickle_and_copy() -> None:
    net = model()
    bnkit.apply(net, "frozen", where="4")
    bnkit.to_sync(net)
    x = torch.randn(2, 3, 8, 8)
    expected = net.eval()(x)
    buf = io.BytesIO()
    torch.save(net, buf)
    buf.seek(0)
    for other in (copy.deepcopy(net), torch.load(buf, weights_only=False)):
        assert type(other[4]) is type(net[4]) and torch.equal(other(x), expected)
        assert bnkit.policy_of(other[4]) == bnkit.preset("frozen")
        bnkit.from_sync(other)
        assert isinstance(other[4], WithActivation) and not isinstance(other[4], nn.SyncBatchNorm)


def test_foreign_sync_layers_need_a_default() -> None:
    net = nn.SyncBatchNorm.convert_sync_batchnorm(small_cnn())
    with pytest.raises(bnkit.LayerError, match=r"'1', '4', '9' are nn\.SyncBatchNorm layers that"):
        bnkit.from_sync(net)
    bnkit.from_sync(net, where=lambda n, m: n != "9", default=nn.BatchNorm2d)
    assert type(net[1]) is nn.BatchNorm2d and type(net[9]) is nn.SyncBatchNorm


def test_sync_layers_freeze_to_their_original_rank() -> None:
    net = bnkit.to_sync(small_cnn())
    bnkit.to_frozen(net)
    assert (
        type(net[9]) is bnkit.convert.FrozenBatchNorm1d
        and type(net[1]) is bnkit.convert.FrozenBatchNorm2d
    )
    bnkit.from_frozen(net)
    assert type(net[9]) is nn.SyncBatchNorm
    bnkit.from_sync(net)
    assert type(net[9]) is nn.BatchNorm1d


class ComputesItself(nn.BatchNorm2d):
    """timm's BatchNormAct2d pattern: F.batch_norm on its own buffers, then an activation."""

    def forward(self, x: Tensor) -> Tensor:
        out = torch.nn.functional.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            0.1,
            self.eps,
        )
        return torch.relu(out)


class OnlyInEval(nn.BatchNorm1d):
    """Reaches BatchNorm's forward in eval() only."""

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return torch.nn.functional.batch_norm(x, None, None, training=True)
        return super().forward(x)


class NeedsTwoInputs(nn.BatchNorm1d):
    def forward(self, x: Tensor, mask: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(x * mask)


@pytest.mark.parametrize(
    ("cls", "message"),
    [
        (ComputesItself, r"ComputesItself\.forward computes BatchNorm itself"),
        (OnlyInEval, r"OnlyInEval\.forward does not call .* in train\(\)"),
        (NeedsTwoInputs, r"bnkit could not check that NeedsTwoInputs\.forward calls super"),
    ],
)
def test_to_sync_refuses_a_subclass_whose_forward_never_synchronizes(
    cls: type[nn.Module], message: str
) -> None:
    """Regression: such a subclass became a SyncBatchNorm that never synchronized, silently."""
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), randomize(cls(4)))  # type: ignore[arg-type]
    if cls is not ComputesItself:  # which takes no policy either (refused at apply)
        bnkit.apply(net, "frozen_stats", where="2")
    before = copy.deepcopy(net.state_dict())
    classes = [type(m) for m in net]
    with pytest.raises(bnkit.LayerError, match=f"layer '2': {message}"):
        bnkit.to_sync(net)
    assert [type(m) for m in net] == classes  # nothing changed, the first layer included
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    if cls is not ComputesItself:
        assert bnkit.policy_of(net[2]) == bnkit.preset("frozen_stats")
    assert not [k for k in vars(net[2]) if k.startswith("_bnkitsync")]
    bnkit.to_sync(net, where="1")  # the others convert
    assert type(net[1]) is nn.SyncBatchNorm


def test_subclasses_calling_super_forward_pass_the_check_without_changing() -> None:
    net = model().train()
    before = copy.deepcopy(net.state_dict())
    bnkit.to_sync(net)  # WithActivation calls super().forward(x): checked, then converted
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert net[4].training and isinstance(net[4], nn.SyncBatchNorm)
