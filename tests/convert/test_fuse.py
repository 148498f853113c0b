"""fuse: outputs of the unfused model and of torch's own fusion, reports, both ways of finding
pairs (the fx graph, and a real forward of an example input), and adversarial models where a
fold would change what the model computes."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
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


def _call(model: nn.Module, x: Any) -> Tensor:
    out = model(*x) if isinstance(x, tuple) else model(x)
    assert isinstance(out, Tensor)
    return out


def fused_as_unfused(model: nn.Module, x: Any, fresh: Any) -> bnkit.convert.FuseReport:
    """Fuse on ``x`` (a real forward) and check on ``fresh`` that nothing changed; return the
    report. The fx route must not change the model's outputs either."""
    model.eval()
    report = bnkit.convert.fuse_plan(model, x)
    with torch.no_grad():
        want = _call(model, fresh)
        torch.testing.assert_close(_call(bnkit.fuse(model, x), fresh), want, rtol=1e-5, atol=1e-5)
        with pytest.warns() if bnkit.convert.fuse_plan(model).untraced else _Nothing():
            by_fx = bnkit.fuse(model)
        torch.testing.assert_close(_call(by_fx, fresh), want, rtol=1e-5, atol=1e-5)
    return report


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


@settings(max_examples=16)
@given(
    dims=st.sampled_from([1, 2, 3]),
    transposed=st.booleans(),
    groups=st.sampled_from([1, 2, 4]),
    bias=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_folded_layers_match_the_unfused_model_and_torch(
    dims: int, transposed: bool, groups: int, bias: bool, dtype: torch.dtype
) -> None:
    conv_cls, convt_cls, bn_cls = CONV[dims]
    cls = convt_cls if transposed else conv_cls
    conv = cls(4, 4 if groups == 4 else 8, 3, groups=groups, bias=bias, dtype=dtype)  # 4: depthwise
    model = nn.Sequential(conv, randomize(bn_cls(conv.out_channels, dtype=dtype))).eval()
    x = torch.randn((3, 4, 5, 4, 4)[: dims + 2], dtype=dtype)
    for fused in (bnkit.fuse(model), bnkit.fuse(model, x)):
        assert isinstance(fused[1], nn.Identity) and isinstance(model[1], bn_cls)  # untouched
        tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}
        with torch.no_grad():
            torch.testing.assert_close(fused(x), model(x), **tol)
            if not (transposed and groups > 1):  # torch's fold assumes groups=1 for transposed
                theirs = fuse_conv_bn_eval(model[0], model[1], transpose=transposed)
                torch.testing.assert_close(fused(x), theirs(x), **tol)


def test_a_resnet_with_shortcuts_and_a_flattened_linear_head() -> None:
    model = nn.Sequential(*tiny_resnet(), randomize(nn.BatchNorm1d(10))).eval()
    report = bnkit.convert.fuse_plan(model)
    assert ("3.conv1", "3.bn1") in report.fused and ("4.short.0", "4.short.1") in report.fused
    assert ("7", "8") in report.fused  # Flatten -> Linear -> BatchNorm1d: (N, C) for sure
    assert len(report.fused) == 7 and not report.left and not report.untraced
    x = torch.randn(4, 3, 16, 16)
    assert bnkit.convert.fuse_plan(model, x).fused == report.fused
    fused_as_unfused(model, x, torch.randn(3, 3, 16, 16))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bnkit.fuse(model).modules())


def test_linear_to_batchnorm_without_an_example_input_is_left_alone() -> None:
    """The fx graph has no shapes: a Linear's features are dimension 1 only for (N, C)."""
    head = nn.Sequential(nn.Linear(5, 3), randomize(nn.BatchNorm1d(3))).eval()
    left = dict(bnkit.convert.fuse_plan(head).left)
    assert "pass example_input=" in left["1"] and "2D (N, C)" in left["1"]
    report = fused_as_unfused(head, torch.randn(7, 5), torch.randn(4, 5))
    assert report.fused == (("0", "1"),) and report.found_by == "forward"


class Tokens(nn.Module):
    """A Linear on tokens, then BatchNorm1d on some layout of its output."""

    def __init__(self, layout: str, c: int = 6, t: int = 6) -> None:
        super().__init__()
        self.layout = layout
        self.fc = nn.Linear(4 if layout != "ncl" else t, c if layout != "ncl" else t)
        self.bn = randomize(nn.BatchNorm1d(c))

    def forward(self, x: Tensor) -> Tensor:
        y = self.fc(x)
        if self.layout == "flattened":  # (N, T, C) -> (N*T, C): LeViT
            return self.bn(y.flatten(0, 1)).reshape_as(y)
        if self.layout == "transposed":  # (N, T, C) -> (N, C, T)
            return self.bn(y.transpose(1, 2)).transpose(1, 2)
        return self.bn(y)  # "ncl": Linear over L of (N, C, L); "ntc": BN over T of (N, T, C)


@pytest.mark.parametrize("layout", ["flattened", "transposed"])
def test_linear_on_tokens_folds_when_its_features_are_the_channels(layout: str) -> None:
    x, fresh = torch.randn(3, 6, 4), torch.randn(2, 6, 4)
    report = fused_as_unfused(Tokens(layout), x, fresh)
    assert report.fused == (("fc", "bn"),)


@pytest.mark.parametrize("layout", ["ncl", "ntc"])
def test_fuse_refuses_linear_on_ncl_followed_by_batchnorm1d_over_c(layout: str) -> None:
    """Regression: Linear over L of (N, C, L), then BatchNorm1d(C), was folded per Linear
    feature (as if the BatchNorm normalized them) and the outputs moved by 0.17."""
    model = Tokens(layout)
    x = torch.randn(3, 6, 6 if layout == "ncl" else 4)
    report = fused_as_unfused(model, x, x[:2] + 1)
    why = dict(report.left)["bn"]
    assert "normalizes dimension 1 of its input, but 'fc''s features are in dimension 2" in why


class SharedWeight(nn.Module):
    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = randomize(nn.BatchNorm2d(3))
        self.other = nn.Conv2d(3, 3, 3, padding=1)
        if how == "tied":
            self.other.weight = self.conv.weight

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(self.conv(x))
        if self.how == "functional":
            return y + F.conv2d(x, self.conv.weight, padding=1)
        return y + self.other(x)


@pytest.mark.parametrize("how", ["functional", "tied"])
def test_fuse_refuses_when_the_conv_weight_is_also_used_elsewhere(how: str) -> None:
    """Regression: folding rescales the weight for every user of it (the outputs moved by 1.1
    when forward also used the conv's weight directly)."""
    model = SharedWeight(how)
    x = torch.randn(2, 3, 6, 6)
    report = fused_as_unfused(model, x, x + 1)
    assert not report.fused
    if how == "tied":
        assert dict(report.left)["bn"] == "the weight of 'conv' is shared with 'other'"
        assert dict(bnkit.convert.fuse_plan(model).left)["bn"] == dict(report.left)["bn"]
    else:
        assert dict(report.left)["bn"].startswith("the weight or bias of 'conv' is also used")
        assert dict(bnkit.convert.fuse_plan(model).left)["bn"] == (
            "the weight or bias of 'conv' is also read in forward"
        )


class Twice(nn.Module):
    """One conv called on two inputs: into one BatchNorm layer both times, or into two."""

    def __init__(self, same_bn: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = randomize(nn.BatchNorm2d(4))
        self.bn2 = self.bn if same_bn else randomize(nn.BatchNorm2d(4), seed=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x)) + self.bn2(self.conv(x.flip(-1)))


def test_a_conv_and_its_batchnorm_called_twice_fold_on_a_forward() -> None:
    x = torch.randn(2, 3, 6, 6)
    report = fused_as_unfused(Twice(same_bn=True), x, x + 1)
    assert report.fused == (("conv", "bn"),)
    fx_left = dict(bnkit.convert.fuse_plan(Twice(same_bn=True).eval()).left)
    assert fx_left["bn"] == "it or the layer before it is called more than once"


def test_a_conv_feeding_two_batchnorm_layers_folds_neither() -> None:
    x = torch.randn(2, 3, 6, 6)
    left = dict(fused_as_unfused(Twice(same_bn=False), x, x + 1).left)
    assert left["bn"] == "the output of 'conv' also feeds 'bn2'"
    assert left["bn2"] == "the output of 'conv' also feeds 'bn'"


class Misc(nn.Module):
    """Conv outputs used twice, through an in-place ReLU, returned, and a BN read elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(3, 3, 1) for _ in range(4))
        self.bns = nn.ModuleList(randomize(nn.BatchNorm2d(3), seed=i) for i in range(4))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a = self.convs[0](x)
        out = self.bns[0](a) + a  # used twice
        b = torch.relu_(self.convs[1](x))  # changed in place before the BatchNorm
        out = out + self.bns[1](b)
        c = self.convs[2](x)
        out = out + self.bns[2](c)
        out = out + self.bns[3](self.convs[3](x)) * self.bns[3].weight.sum()  # read elsewhere
        return out, c  # the conv output itself is returned too


def test_uses_a_fold_would_change_are_each_named() -> None:
    model = Misc().eval()
    x = torch.randn(2, 3, 4, 4)
    report = bnkit.convert.fuse_plan(model, x)
    left = dict(report.left)
    assert not report.fused
    assert left["bns.0"] == "the output of 'convs.0' is also used (aten.add.Tensor in forward)"
    assert left["bns.1"] == "the output of 'convs.1' is also used (aten.relu_.default in forward)"
    assert left["bns.2"] == "the output of 'convs.2' is also used (returned by the model)"
    assert left["bns.3"].startswith("its tensors are also used outside its forward (aten.sum")
    with torch.no_grad():
        for a, b in zip(bnkit.fuse(model, x)(x + 1), model(x + 1), strict=True):
            torch.testing.assert_close(a, b)


class Ghost(nn.Module):
    """A Linear, then one BatchNorm layer per chunk (TabNet's ghost batches) or per feature half."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.fc = nn.Linear(5, 6)
        self.bn = randomize(nn.BatchNorm1d(6 if dim == 0 else 3))

    def forward(self, x: Tensor) -> Tensor:
        if self.dim == 0:
            return torch.cat([self.bn(c) for c in self.fc(x).chunk(3, dim=0)])
        return self.bn(self.fc(x).reshape(len(x), 2, 3)[:, 0])


def test_chunks_along_the_batch_fold_and_along_the_features_do_not() -> None:
    x = torch.randn(9, 5)
    assert fused_as_unfused(Ghost(0), x, x[:6] + 1).fused == (("fc", "bn"),)
    left = dict(fused_as_unfused(Ghost(1), torch.randn(4, 5), torch.randn(3, 5)).left)
    assert left["bn"] == (
        "no Conv/ConvTranspose/Linear right before it (its input is the result of "
        "aten.select.int in forward, computed from the output of 'fc')"
    )


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
            self.unused = nn.BatchNorm2d(4)

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
    assert left["unused"] == "not called as a module in forward"
    assert not report.fused
    assert "left   'bn': the output of 'conv' is also used elsewhere" in str(report)
    by_forward = dict(bnkit.convert.fuse_plan(model, torch.randn(2, 3, 4, 4)).left)
    assert by_forward["hooked"] == left["hooked"]
    assert by_forward["training_bn"] == left["training_bn"]
    assert by_forward["unused"] == "not reached by the forward of the example input"
    assert by_forward["after_relu"] == (
        "no Conv/ConvTranspose/Linear right before it (its input is the result of "
        "aten.relu.default in forward)"
    )


def test_fixed_policies_and_frozen_exports_fold_in_train_mode() -> None:
    model = tiny_resnet().train()
    bnkit.freeze(model, where="3")  # frozen: fixed in train() too
    bnkit.to_frozen(model, where="4")
    bnkit.apply(model, "adapt", where="1")  # updates in train(): left
    x = torch.randn(2, 3, 8, 8)
    for report in (bnkit.convert.fuse_plan(model), bnkit.convert.fuse_plan(model, x)):
        left = dict(report.left)
        assert left["1"].startswith("updates its running statistics in train()")
        assert {bn for _, bn in report.fused} == {"3.bn1", "3.bn2", "4.bn1", "4.bn2", "4.short.1"}
    for fused in (bnkit.fuse(model), bnkit.fuse(model, x)):
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
    assert dict(bnkit.convert.fuse_plan(model, torch.randn(4, 2)).left)["1"].startswith(
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


def test_untraceable_models_fold_nothing_without_an_example_input_and_all_with_one() -> None:
    model = Untraceable().eval()
    report = bnkit.convert.fuse_plan(model)
    assert [name for name, _ in report.untraced] == ["Untraceable"]
    assert "control flow" in report.untraced[0][1]
    assert not report.fused and len(report.left) == 6
    assert all("pass example_input=" in why for _, why in report.left)
    with pytest.warns(bnkit.errors.FuseWarning, match="torch.fx could not trace 'Untraceable'"):
        unchanged = bnkit.fuse(model)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in unchanged.modules()) == 6
    x = torch.randn(2, 3, 10, 10)
    by_forward = fused_as_unfused(model, x, x + 0.5)
    assert len(by_forward.fused) == 6 and not by_forward.left and by_forward.found_by == "forward"
    assert ("stem.0", "stem.1") in by_forward.fused
    assert "pairs found on a forward of the example input" in str(by_forward)


def test_fuse_and_fuse_plan_refuse_what_is_not_a_module() -> None:
    """Regression: a non-Module gave an AttributeError."""
    for call in (bnkit.fuse, bnkit.convert.fuse_plan):
        with pytest.raises(bnkit.LayerError, match=r"expects a torch.nn.Module \(got dict\)"):
            call({"weight": torch.ones(1)})  # type: ignore[arg-type]


def test_an_example_input_the_model_does_not_take_is_an_input_error() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    with pytest.raises(bnkit.InputError, match="the forward of the example input raised"):
        bnkit.fuse(model, torch.randn(2, 5, 8, 8))


def test_dict_and_tuple_example_inputs() -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.bn = randomize(nn.BatchNorm2d(4))

        def forward(self, pixels: Tensor, scale: Tensor) -> Tensor:
            return self.bn(self.conv(pixels)) * scale

    model = Two().eval()
    x, s = torch.randn(2, 3, 4, 4), torch.tensor(2.0)
    for example in ((x, s), {"pixels": x, "scale": s}):
        assert bnkit.convert.fuse_plan(model, example).fused == (("conv", "bn"),)


def test_an_unbatched_convolution_keeps_its_channels_in_dimension_0() -> None:
    """A Conv1d on an unbatched (C, L) input gives (C_out, L): BatchNorm1d then normalizes L."""
    model = nn.Sequential(nn.Conv1d(3, 4, 1), randomize(nn.BatchNorm1d(4))).eval()
    x = torch.randn(3, 4)
    report = bnkit.convert.fuse_plan(model, x)
    assert dict(report.left)["1"].startswith(
        "it normalizes dimension 1 of its input, but '0''s features are in dimension 0"
    )
    with torch.no_grad():
        torch.testing.assert_close(bnkit.fuse(model, x)(x + 1), model(x + 1))


def test_a_convolution_into_a_batchnorm_of_another_rank_is_left_alone() -> None:
    """An unbatched Conv2d output (C, H, W) goes into BatchNorm1d as (N=C, C=H, L=W)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 1), randomize(nn.BatchNorm1d(4))).eval()
    assert dict(bnkit.convert.fuse_plan(model).left)["1"] == (
        "'0' is a Conv2d and the layer a BatchNorm1d: its channels cannot be dimension 1 of a "
        "batched convolution output"
    )
    x = torch.randn(3, 4, 5)
    with torch.no_grad():
        torch.testing.assert_close(bnkit.fuse(model, x)(x + 1), model(x + 1))


class Reshaped(nn.Module):
    """A Linear whose (N, 6) output is reshaped before BatchNorm1d."""

    def __init__(self, shape: tuple[int, ...], channels: int) -> None:
        super().__init__()
        self.shape = shape
        self.fc = nn.Linear(5, 6)
        self.bn = randomize(nn.BatchNorm1d(channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.fc(x).reshape(self.shape))


@pytest.mark.parametrize(
    ("shape", "channels", "folds"),
    [
        ((2, 2, 6), 2, False),  # (N, 6) -> (2, N/2, 6): BatchNorm over the batch halves
        ((2, 6, 2), 6, False),  # size 6 in dimension 1, but it mixes batch and features
        ((4, 6, 1), 6, True),  # a trailing 1: the features stay in dimension 1
        ((2, 12), 12, False),  # two samples merged into one row
        ((4, 6), 6, True),
    ],
)
def test_reshapes_fold_only_when_the_features_stay_in_dimension_1(
    shape: tuple[int, ...], channels: int, folds: bool
) -> None:
    x = torch.randn(4, 5)
    report = fused_as_unfused(Reshaped(shape, channels), x, x + 1)
    assert bool(report.fused) == folds


@pytest.mark.parametrize("dim", [0, 1])
def test_select_and_unbind_drop_a_dimension_before_the_features(dim: int) -> None:
    class Picked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(5, 6)
            self.bn = randomize(nn.BatchNorm1d(6 if dim == 1 else 3))

        def forward(self, x: Tensor) -> Tensor:  # (N, T, 5) -> (N, T, 6)
            y = self.fc(x)
            if dim == 1:  # token 0 of each sample: (N, 6), the features in dimension 1
                return self.bn(y[:, 0])
            return self.bn(y.unbind(2)[0])  # feature 0 of each token: (N, T) — not features

    x = torch.randn(4, 3, 5)
    report = fused_as_unfused(Picked(), x, x + 1)
    assert bool(report.fused) == (dim == 1)


def test_an_empty_example_batch_shows_nothing_and_folds_nothing() -> None:
    model = Tokens("flattened").eval()
    report = bnkit.convert.fuse_plan(model, torch.randn(0, 6, 4))
    assert dict(report.left)["bn"] == (
        "the example input gave 'fc' an empty output (0, 6, 6), which shows nothing of where "
        "its values go; use an example input with samples"
    )


def test_a_reshape_of_an_empty_tensor_places_the_features_nowhere() -> None:
    from bnkit.convert._fuse_trace import _reshaped

    assert _reshaped(1, [4, 6], [2, 12]) is None  # two rows merged
    assert _reshaped(1, [4, 6], [2, 2, 6]) == 2  # the rows split, the features kept
    assert _reshaped(1, [4, 6], [4, 1, 6]) == 2
    assert _reshaped(1, [0, 6], [0, 3, 6]) is None  # any reshape of no values is legal
