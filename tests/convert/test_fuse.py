"""fuse: outputs of the unfused model and of torch's own fusion, reports, fallbacks."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.helpers import randomize
from tests.nets import tiny_resnet
from torch import Tensor
from torch.nn.utils.fusion import fuse_conv_bn_eval

import bnkit

CONV = {
    1: (nn.Conv1d, nn.ConvTranspose1d, nn.BatchNorm1d),
    2: (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d),
    3: (nn.Conv3d, nn.ConvTranspose3d, nn.BatchNorm3d),
}


@settings(max_examples=16)
@given(
    dims=st.sampled_from([1, 2, 3]),
    transposed=st.booleans(),
    groups=st.sampled_from([1, 2]),
    bias=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_folded_layers_match_the_unfused_model_and_torch(
    dims: int, transposed: bool, groups: int, bias: bool, dtype: torch.dtype
) -> None:
    conv_cls, convt_cls, bn_cls = CONV[dims]
    cls = convt_cls if transposed else conv_cls
    conv = cls(4, 6, 3, groups=groups, bias=bias, dtype=dtype)
    model = nn.Sequential(conv, randomize(bn_cls(6, dtype=dtype))).eval()
    fused = bnkit.fuse(model)
    assert isinstance(fused[1], nn.Identity) and isinstance(model[1], bn_cls)  # input untouched
    x = torch.randn((3, 4, 5, 4, 4)[: dims + 2], dtype=dtype)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), **tol)
        if not (transposed and groups > 1):  # torch's fold assumes groups=1 for transposed
            theirs = fuse_conv_bn_eval(model[0], model[1], transpose=transposed)
            torch.testing.assert_close(fused(x), theirs(x), **tol)


def test_linear_and_a_resnet_with_shortcuts() -> None:
    model = tiny_resnet().eval()
    report = bnkit.convert.fuse_plan(model)
    assert ("3.conv1", "3.bn1") in report.fused and ("4.short.0", "4.short.1") in report.fused
    assert len(report.fused) == 6 and not report.left and not report.untraced
    fused = bnkit.fuse(model)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    head = nn.Sequential(nn.Linear(5, 3), randomize(nn.BatchNorm1d(3))).eval()
    z = torch.randn(7, 5)
    with torch.no_grad():
        torch.testing.assert_close(bnkit.fuse(head)(z), head(z), rtol=1e-5, atol=1e-6)


def test_what_is_left_alone_and_why() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn = nn.BatchNorm2d(4)
            self.after_relu = nn.BatchNorm2d(4)
            self.hooked_conv = nn.Conv2d(4, 4, 1)
            self.hooked = nn.BatchNorm2d(4)
            self.hooked.register_forward_hook(lambda m, a, o: None)
            self.training_bn = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 1)

        def forward(self, x: Tensor) -> Tensor:
            y = self.conv(x)
            z = self.bn(y) + y  # the conv output has a second user
            z = self.after_relu(torch.relu(z))
            z = self.hooked(self.hooked_conv(z))
            return self.training_bn(self.conv2(z))

    model = Shared().eval()
    model.training_bn.train()
    report = bnkit.convert.fuse_plan(model)
    left = dict(report.left)
    assert left["bn"] == "the output of 'conv' is also used elsewhere"
    assert left["after_relu"].startswith("no Conv/ConvTranspose/Linear right before it (its input")
    assert left["hooked"] == "has forward hooks, which folding would drop"
    assert (
        left["training_bn"]
        == "normalizes with batch statistics in train(); call model.eval() first"
    )
    assert not report.fused
    assert "left   'bn': the output of 'conv' is also used elsewhere" in str(report)


def test_fixed_policies_and_frozen_exports_fold_in_train_mode() -> None:
    model = tiny_resnet().train()
    bnkit.freeze(model, where="3")  # frozen: fixed in train() too
    bnkit.to_frozen(model, where="4")
    bnkit.apply(model, "adapt", where="1")  # updates in train(): left
    report = bnkit.convert.fuse_plan(model)
    left = dict(report.left)
    assert left["1"].startswith("updates its running statistics in train()")
    assert {bn for _, bn in report.fused} == {"3.bn1", "3.bn2", "4.bn1", "4.bn2", "4.short.1"}
    x = torch.randn(2, 3, 8, 8)
    fused = bnkit.fuse(model)
    reference = copy.deepcopy(model)
    bnkit.apply(reference, "frozen", where="1")  # the only one normalizing with batch stats
    with torch.no_grad():
        fused_out, ref_out = fused.eval()(x), reference.eval()(x)
    torch.testing.assert_close(fused_out, ref_out, rtol=1e-5, atol=1e-5)


def test_subclasses_with_their_own_forward_are_left() -> None:
    class WithActivation(nn.BatchNorm1d):
        def forward(self, x: Tensor) -> Tensor:
            return torch.relu(super().forward(x))

    model = nn.Sequential(nn.Linear(2, 3), WithActivation(3)).eval()
    assert dict(bnkit.convert.fuse_plan(model).left)["1"].startswith(
        "its class WithActivation defines"
    )


class Gate(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            return -x
        return x


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), randomize(nn.BatchNorm2d(4)), Gate())
        self.branch = tiny_resnet()[3:5]

    def forward(self, x: Tensor) -> Tensor:
        y = self.stem(x)
        return self.branch(torch.cat([y, y], dim=1))


def test_untraceable_models_fall_back_with_a_warning() -> None:
    model = Untraceable().eval()
    report = bnkit.convert.fuse_plan(model)
    assert [name for name, _ in report.untraced] == ["Untraceable", "stem", "stem.2"]
    assert "control flow" in report.untraced[0][1]
    assert ("stem.0", "stem.1") in report.fused  # neighbours in an nn.Sequential
    assert ("branch.3.conv1", "branch.3.bn1") in report.fused  # a traceable submodule
    assert len(report.fused) == 6 and not report.left
    with pytest.warns(bnkit.errors.FuseWarning, match="torch.fx could not trace 'Untraceable'"):
        fused = bnkit.fuse(model)
    x = torch.randn(2, 3, 10, 10)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), model(x), rtol=1e-5, atol=1e-5)
