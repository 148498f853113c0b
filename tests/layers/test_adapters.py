"""Layers whose own forward computes BatchNorm: timm's BatchNormAct2d built in, user classes
declared with register_layer, and refusals that hold whatever runs in between."""

from __future__ import annotations

import copy
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from tests.helpers import assert_bitwise, randomize, step
from tests.torchvision_shim import install

import bnkit
from bnkit import LayerError

install()
timm_norm_act = pytest.importorskip("timm.layers.norm_act")


class BNAct(nn.BatchNorm1d):
    """BatchNorm computed in the layer's own forward, then an activation."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean, var, w, b = self.running_mean, self.running_var, self.weight, self.bias
        return F.relu(F.batch_norm(x, mean, var, w, b, self.training, self.momentum, self.eps))


class Declared(nn.BatchNorm2d):
    """A user class computing BatchNorm itself, declared to bnkit below."""

    def __init__(self, c: int) -> None:
        super().__init__(c, momentum=0.05)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = self.momentum if self.momentum is not None else 0.0
        track = self.training and self.track_running_stats
        if track and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        keep = track or not self.training  # as nn.BatchNorm passes its buffers
        y = F.batch_norm(
            x, self.running_mean if keep else None, self.running_var if keep else None,
            self.weight, self.bias, self.training, factor, self.eps,
        )  # fmt: skip
        return self.act(y)


bnkit.register_layer(Declared, after=lambda layer, y: layer.act(y))


def _timm_layer(c: int = 4) -> nn.Module:
    layer = timm_norm_act.BatchNormAct2d(c, act_layer=nn.SiLU, momentum=0.02)
    return randomize(layer)  # type: ignore[arg-type]


def _x(seed: int, shape: tuple[int, ...] = (6, 4, 5, 5)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 2 + 1


@pytest.mark.parametrize("build", [_timm_layer, lambda: randomize(Declared(4))])
@pytest.mark.parametrize("preset", ["pytorch", "frozen_affine", "batch_stats"])
def test_adapted_layers_follow_native_presets_bit_for_bit(build: object, preset: str) -> None:
    layer = build()  # type: ignore[operator]
    untouched = copy.deepcopy(layer)
    phases = ((0, True), (1, True), (2, False))
    if preset == "batch_stats":  # what PyTorch can express: train() without tracking
        untouched.track_running_stats = False
        phases = ((0, True), (1, True))
    if preset == "frozen_affine":
        untouched.requires_grad_(False)
    ours = bnkit.apply(layer, preset)
    assert type(ours).__name__.startswith("Managed")
    for seed, training in phases:
        ours.train(training)
        untouched.train(training)
        assert_bitwise(step(ours, _x(seed), seed), step(untouched, _x(seed), seed))


@pytest.mark.parametrize("build", [_timm_layer, lambda: randomize(Declared(4))])
def test_adapted_layers_freeze_to_their_eval_behaviour(build: object) -> None:
    layer = build()  # type: ignore[operator]
    reference = copy.deepcopy(layer).eval()
    bnkit.freeze(layer).train()
    before = layer.running_mean.clone()
    x = _x(3).requires_grad_()
    y = layer(x)
    assert torch.equal(y, reference(_x(3)))
    assert torch.equal(layer.running_mean, before)
    y.sum().backward()
    assert layer.weight.grad is None and x.grad is not None
    bnkit.unfreeze(layer)
    assert type(layer) is type(reference) and layer.momentum == reference.momentum


def test_timm_layer_keeps_its_momentum_and_compiles() -> None:
    layer = _timm_layer()
    bnkit.apply(layer, "pytorch")
    assert layer.momentum == 0.02
    eager = copy.deepcopy(layer).train()
    compiled = torch.compile(copy.deepcopy(layer).train(), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(_x(4)), eager(_x(4)))
    torch.testing.assert_close(compiled._orig_mod.running_mean, eager.running_mean)


def test_a_layer_that_computes_batchnorm_itself_is_refused_at_apply() -> None:
    layer = BNAct(4)
    for call in (
        lambda: bnkit.apply(layer, "frozen"),
        lambda: bnkit.freeze(layer),
        lambda: bnkit.tent(nn.Sequential(layer)),
        lambda: bnkit.synchronize(layer),
    ):
        with pytest.raises(LayerError, match=r"computes BatchNorm itself.*register_layer\(BNAct"):
            call()
        assert type(layer) is BNAct and layer.weight.requires_grad
    with pytest.raises(LayerError, match="computes BatchNorm itself"), bnkit.using(layer, "frozen"):
        pass


def _unreadable_class() -> type[nn.BatchNorm1d]:
    """A bypassing class whose source bnkit cannot read (made by exec, as in a notebook)."""
    source = textwrap.dedent(
        """
        class Hidden(nn.BatchNorm1d):
            def forward(self, x):
                return F.relu(F.batch_norm(x, self.running_mean, self.running_var, self.weight,
                                           self.bias, self.training, self.momentum, self.eps))
        """
    )
    namespace: dict[str, object] = {"nn": nn, "F": F}
    exec(compile(source, "<notebook>", "exec"), namespace)
    cls = namespace["Hidden"]
    assert isinstance(cls, type)
    return cls


def test_refusal_of_an_unreadable_forward_sticks_whatever_runs_in_between() -> None:
    cls = _unreadable_class()
    layer = bnkit.freeze(cls(4)).train()
    x = torch.randn(8, 4) + 3
    before = layer.running_mean.clone()
    with pytest.raises(LayerError, match="does not run BatchNorm's forward"):
        layer(x)
    assert torch.equal(layer.running_mean, before)  # buffers put back
    with pytest.raises(LayerError, match="does not run BatchNorm's forward"):
        layer(x)  # still refused: never a silent bypass
    model = nn.Sequential(layer)
    with pytest.raises(LayerError):  # using() refuses the class up front
        bnkit.using(model, "batch_stats").__enter__()
    with pytest.raises(LayerError):
        layer(x)
    with pytest.raises(LayerError):
        bnkit.recalibrate(model, [x], where="0", progress=False)
    with pytest.raises(LayerError):
        layer(x)
    assert torch.equal(layer.running_mean, before)
    with pytest.raises(LayerError, match="does not run BatchNorm's forward"):
        bnkit.apply(cls(4), "frozen")  # other layers of the class: refused at apply
    bnkit.unfreeze(layer)
    assert type(layer) is cls
    layer(x)  # unmanaged: its own forward, as before bnkit


def test_unfreeze_before_any_forward_leaves_no_hooks() -> None:
    class BNReLU(nn.BatchNorm2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(super().forward(x))

    layer = BNReLU(3)
    bnkit.freeze(layer)
    assert layer._forward_hooks and layer._forward_pre_hooks  # the first-forward check
    bnkit.unfreeze(layer)
    assert not layer._forward_hooks and not layer._forward_pre_hooks
    y = layer.train()(torch.randn(2, 3, 4, 4))
    assert (y >= 0).all()


def test_a_subclass_of_an_adapted_class_keeps_its_own_forward() -> None:
    class Scaled(Declared):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    layer = randomize(Scaled(4))
    reference = copy.deepcopy(layer).eval()
    bnkit.freeze(layer).train()
    assert torch.equal(layer(_x(5)), reference(_x(5)))


def test_register_layer_checks_what_it_is_given() -> None:
    with pytest.raises(LayerError, match="needs a BatchNorm subclass"):
        bnkit.register_layer(nn.Linear)  # type: ignore[type-var]
    with pytest.raises(LayerError, match="does not define forward"):
        bnkit.register_layer(nn.BatchNorm2d)
    with pytest.raises(LayerError, match="after must be a callable"):
        bnkit.register_layer(BNAct, after="relu")  # type: ignore[arg-type]
    assert type(BNAct(2)) is BNAct  # nothing registered by the failed calls
    with pytest.raises(LayerError):
        bnkit.apply(BNAct(2), "frozen")


def test_frozen_export_of_an_adapted_layer_keeps_its_activation() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), _timm_layer())
    model.eval()
    x = torch.randn(2, 3, 7, 7)
    expected = model(x)
    keys = set(model.state_dict())
    bnkit.to_frozen(model)
    assert type(model[1]).__name__ == "FrozenBatchNorm2d"
    assert torch.equal(model(x), expected)
    assert set(model.state_dict()) == keys - {"1.num_batches_tracked"}
    bnkit.from_frozen(model)
    assert type(model[1]) is timm_norm_act.BatchNormAct2d
    assert torch.equal(model(x), expected)


class OnlyInEval(nn.BatchNorm1d):
    """Reaches BatchNorm's forward in eval() only: a condition the source reading cannot see."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias)
        return super().forward(x)


def test_a_forward_that_skips_bnkit_in_one_phase_is_refused_in_that_phase() -> None:
    layer = bnkit.freeze(randomize(OnlyInEval(3)))
    x = torch.randn(8, 3) + 2
    layer.eval()(x)  # reaches bnkit's forward: fine, and still watched for train()
    before = [b.clone() for b in layer.buffers()]
    for _ in range(2):  # refused, and stays refused
        with pytest.raises(LayerError, match=r"does not run BatchNorm's forward .* in train\(\)"):
            layer.train()(x)
        assert all(torch.equal(a, b) for a, b in zip(before, layer.buffers(), strict=True))
    with pytest.raises(LayerError):
        layer.eval()(x)  # the class is refused in every phase from now on
