"""recalibrate: numbers against torch's update_bn, fvcore's precise BN and a float64 oracle."""

from __future__ import annotations

import copy
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.nets import assert_same_state, batches, small_cnn, state
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import update_bn

import bnkit

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # fvcore scripts a function on import
    from fvcore.nn import precise_bn


def bn_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, _BatchNorm)]


def oracle(model: nn.Module, data: list[Tensor]) -> dict[str, tuple[Tensor, Tensor, int]]:
    """float64 mean / unbiased var / count of every BN input in a train-mode pass."""
    net = copy.deepcopy(model).train()
    seen: dict[str, list[Tensor]] = {n: [] for n in bn_names(net)}
    for name, m in net.named_modules():
        if isinstance(m, _BatchNorm):
            m.register_forward_pre_hook(
                lambda _m, args, name=name: seen[name].append(args[0].detach().double())
            )
    with torch.no_grad():
        for x in data:
            net(x)
    out = {}
    for name, xs in seen.items():
        x = torch.cat([t.transpose(0, 1).reshape(t.shape[1], -1) for t in xs], dim=1)
        out[name] = (x.mean(1), x.var(1, unbiased=True), x.shape[1])
    return out


def stats_of(model: nn.Module, name: str) -> tuple[Tensor, Tensor]:
    layer = model.get_submodule(name)
    return layer.running_mean.double(), layer.running_var.double()


DATA = batches([16, 7, 16, 5])


# --------------------------------------------------------------------------- peers
def test_cumulative_is_torch_update_bn_bit_for_bit() -> None:
    ours, theirs = small_cnn().eval(), small_cnn().eval()
    bnkit.recalibrate(ours, DATA, estimator="cumulative", progress=False)
    update_bn(DATA, theirs)
    assert_same_state(state(ours), state(theirs))
    assert int(ours[1].num_batches_tracked) == len(DATA)


def test_population_matches_fvcore_and_the_exact_statistics() -> None:
    ours, theirs = small_cnn().eval(), small_cnn().train()
    bnkit.recalibrate(ours, DATA, progress=False)
    precise_bn.update_bn_stats(theirs, DATA, num_iters=len(DATA))
    exact = oracle(small_cnn(), DATA)
    for name in bn_names(ours):
        mean, var = stats_of(ours, name)
        fv_mean, fv_var = stats_of(theirs, name)
        exact_mean, exact_var, n = exact[name]
        # fvcore leaves the biased population variance in running_var; bnkit the unbiased
        # one (what nn.BatchNorm stores there), so they differ by n / (n - 1).
        torch.testing.assert_close(mean, fv_mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(var, fv_var * n / (n - 1), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(mean, exact_mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(var, exact_var, rtol=1e-6, atol=1e-6)
    assert_same_state(state(ours), state(theirs), skip=tuple(bn_names(ours)))


def test_batch_mean_matches_fvcore_mean_of_batch_variances(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        precise_bn, "_PopulationVarianceEstimator", precise_bn._MeanOfBatchVarianceEstimator
    )
    ours, theirs = small_cnn().eval(), small_cnn().train()
    bnkit.recalibrate(ours, DATA, estimator="batch_mean", progress=False)
    precise_bn.update_bn_stats(theirs, DATA, num_iters=len(DATA))
    for name in bn_names(ours):
        for a, b in zip(stats_of(ours, name), stats_of(theirs, name), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- invariance
@settings(max_examples=20)
@given(
    cuts=st.lists(st.integers(2, 12), min_size=1, max_size=6),
    layer=st.sampled_from(["1", "4"]),
)
def test_population_does_not_depend_on_the_batching(cuts: list[int], layer: str) -> None:
    # The selected layer's input depends on each sample only (conv, or an unselected layer
    # normalizing with running statistics), so its statistics are those of all the data.
    total = sum(cuts)
    data = batches([total], seed=3)[0]
    split = list(torch.split(data, cuts))
    model = small_cnn().eval()
    bnkit.recalibrate(model, split, where=layer, progress=False)
    with torch.no_grad():
        upto = int(layer)
        x = model[:upto](data).double().transpose(0, 1).flatten(1)
    mean, var = stats_of(model, layer)
    torch.testing.assert_close(mean, x.mean(1), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var, x.var(1), rtol=1e-6, atol=1e-6)
    assert int(model.get_submodule(layer).num_batches_tracked) == len(cuts)


def test_num_samples_cuts_the_last_batch() -> None:
    a, b = small_cnn().eval(), small_cnn().eval()
    data = batches([10, 10, 10])
    bnkit.recalibrate(a, data, num_samples=25, progress=False)
    bnkit.recalibrate(b, [data[0], data[1], data[2][:5]], progress=False)
    assert_same_state(state(a), state(b))
    c = small_cnn().eval()
    bnkit.recalibrate(c, iter(data), num_batches=2, progress=False)
    assert int(c[1].num_batches_tracked) == 2


def test_batches_as_tuples_dicts_and_a_custom_forward() -> None:
    plain = bnkit.recalibrate(small_cnn().eval(), DATA, progress=False)
    pairs = [(x, torch.zeros(len(x))) for x in DATA]
    as_tuples = bnkit.recalibrate(small_cnn().eval(), pairs, progress=False)
    dicts = [{"label": torch.zeros(len(x)), "image": x} for x in DATA]
    custom = bnkit.recalibrate(
        small_cnn().eval(), dicts, forward=lambda m, b: m(b["image"]), progress=False
    )

    class Keywords(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_cnn()

        def forward(self, image: Tensor, label: Tensor) -> Tensor:
            return self.net(image)

    kw = bnkit.recalibrate(Keywords().eval(), dicts, num_samples=30, progress=False)
    for other in (as_tuples, custom):
        assert_same_state(state(plain), state(other))
    assert int(kw.net[1].num_batches_tracked) == 3


# --------------------------------------------------------------------------- side effects
class GradProbe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.calls: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.calls.append(torch.is_grad_enabled())
        return x


def test_only_the_selected_statistics_change() -> None:
    probe = GradProbe()
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5), probe, nn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), GradProbe(),
    )  # fmt: skip
    bnkit.freeze(model, where="6")  # never updates: left alone by default
    model.eval()
    model[4].train()  # not selected below, in train(): its buffers must not move
    flags = {n: m.training for n, m in model.named_modules()}
    before = state(model)
    params = [p.detach().clone() for p in model.parameters()]
    bnkit.recalibrate(model, DATA, where="1", progress=False)
    assert flags == {n: m.training for n, m in model.named_modules()}
    assert all(torch.equal(p, q) for p, q in zip(params, model.parameters(), strict=True))
    assert_same_state(before, state(model), skip=("1.",))
    assert not torch.equal(before["1.running_mean"], model[1].running_mean)
    assert probe.calls == [False] and model[7].calls == [False]  # stopped after batch 1
    assert bnkit.policy_of(model[6]) == bnkit.preset("frozen")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    # dropout stayed off: the same numbers as without it
    twin = copy.deepcopy(model)
    twin[2] = nn.Identity()
    bnkit.recalibrate(model, DATA, where="1", progress=False)
    bnkit.recalibrate(twin, DATA, where="1", progress=False)
    assert torch.equal(model[1].running_var, twin[1].running_var)


def test_default_selection_skips_layers_that_never_update() -> None:
    model = small_cnn().eval()
    bnkit.apply(model, "frozen_stats", where="4")
    before = state(model)
    bnkit.recalibrate(model, DATA, progress=False)
    assert_same_state(before, state(model), skip=("1.", "9."))
    assert int(model[1].num_batches_tracked) == len(DATA)
    # selected explicitly, it is recalibrated and keeps its policy
    bnkit.recalibrate(model, DATA, where="4", progress=False)
    assert int(model[4].num_batches_tracked) == len(DATA)
    assert bnkit.policy_of(model[4]) == bnkit.preset("frozen_stats")
    assert bnkit.managed_layers(model) == [("4", bnkit.preset("frozen_stats"))]


def test_frozen_exports_recalibrate_like_the_layers_they_came_from() -> None:
    exported = bnkit.to_frozen(small_cnn().eval())
    with pytest.raises(bnkit.errors.RecalibrationError, match="never updates"):
        bnkit.recalibrate(exported, DATA, progress=False)
    bnkit.recalibrate(exported, DATA, where=bnkit.convert.FrozenBatchNorm, progress=False)
    plain = bnkit.recalibrate(small_cnn().eval(), DATA, progress=False)
    for name in bn_names(plain):
        for a, b in zip(stats_of(exported, name), stats_of(plain, name), strict=True):
            assert torch.equal(a, b), name


def test_restores_everything_when_the_forward_fails() -> None:
    model = small_cnn().eval()
    bnkit.apply(model, "adapt", where="4")
    before = state(model)
    classes = [type(m) for m in model.modules()]

    def data() -> Iterator[Tensor]:
        yield from DATA[:2]
        yield torch.randn(4, 5, 8, 8)  # wrong channel count: the first conv raises

    with pytest.raises(RuntimeError, match="channels"):
        bnkit.recalibrate(model, data(), progress=False)
    assert_same_state(before, state(model))
    assert classes == [type(m) for m in model.modules()]
    assert bnkit.managed_layers(model) == [("4", bnkit.preset("adapt"))]
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


# --------------------------------------------------------------------------- errors
class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(3)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.bn(x))


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used, self.spare = nn.BatchNorm1d(3), nn.BatchNorm1d(3)

    def forward(self, x: Tensor) -> Tensor:
        return self.used(x)


X3 = [torch.randn(8, 3) for _ in range(3)]


@pytest.mark.parametrize(
    ("model", "data", "kwargs", "message"),
    [
        (small_cnn(), [], {}, "no batch"),
        (small_cnn(), DATA, {"num_samples": 100}, "ran out after 44 samples .4 batches"),
        (small_cnn(), DATA, {"num_batches": 9}, "ran out after 4 batches"),
        (small_cnn(), DATA, {"num_samples": 2, "num_batches": 2}, "not both"),
        (small_cnn(), DATA, {"num_samples": 0}, "positive"),
        (small_cnn(), DATA, {"estimator": "ema"}, "unknown estimator 'ema'"),
        (small_cnn(), DATA, {"progress": "bar"}, "progress must be"),
        (Twice(), X3, {}, "'bn' was reached twice in one forward"),
        (Unused(), X3, {}, "'spare'.* never reached"),
        (small_cnn(), [torch.randn(1, 3, 8, 8)], {}, "'9' got input shape .1, 4.: 1 value"),
        (small_cnn(), [[]], {}, "cannot feed a batch of type list"),
        (nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False)), X3, {"where": "0"},
         "no running"),
    ],
)  # fmt: skip
def test_errors_name_the_problem(
    model: nn.Module, data: list[Any], kwargs: dict[str, Any], message: str
) -> None:
    model = copy.deepcopy(model).eval()
    before = state(model)
    with pytest.raises(bnkit.errors.RecalibrationError, match=message):
        bnkit.recalibrate(model, data, **{"progress": False, **kwargs})
    assert_same_state(before, state(model))


def test_nothing_to_recalibrate_is_an_error() -> None:
    model = bnkit.freeze(small_cnn())
    with pytest.raises(
        bnkit.errors.RecalibrationError, match="select layers explicitly with where="
    ):
        bnkit.recalibrate(model, DATA, progress=False)


def test_non_finite_batches_are_an_error() -> None:
    data = [DATA[0].clone(), DATA[1]]
    data[0][0, 0, 0, 0] = float("nan")
    model = small_cnn().eval()
    before = state(model)
    with (
        pytest.warns(bnkit.errors.NonFiniteBatchWarning),
        pytest.raises(bnkit.errors.RecalibrationError, match="NaN/Inf"),
    ):
        bnkit.recalibrate(model, data, progress=False)
    assert_same_state(before, state(model))


def test_unmaterialized_lazy_layers_are_refused() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LazyBatchNorm1d())
    with pytest.raises(bnkit.LayerError, match="unmaterialized"):
        bnkit.recalibrate(model, X3, progress=False)


# --------------------------------------------------------------------------- progress
@pytest.mark.parametrize("backend", ["tqdm", "rich"])
def test_progress_bar_on_stderr(backend: str, capsys: pytest.CaptureFixture[str]) -> None:
    bnkit.recalibrate(small_cnn().eval(), DATA, progress=backend)
    err = capsys.readouterr().err
    assert "recalibrating BatchNorm" in err and "100%" in err
    bnkit.recalibrate(small_cnn().eval(), DATA, progress=False)
    bnkit.recalibrate(small_cnn().eval(), DATA)  # quick runs stay quiet
    assert capsys.readouterr().err == ""


class _ViewHead(nn.Module):
    """A model whose forward needs the default layout (.view on a conv output)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 6 * 6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.conv(x).permute(0, 1, 3, 2))
        return self.fc(h.view(h.shape[0], -1))


def test_channels_last_pass_gives_the_statistics_and_restores_the_parameters() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                          nn.BatchNorm2d(8)).eval()  # fmt: skip
    weights = [(p, p.data_ptr(), p.stride(), p.data.clone()) for p in model.parameters()]
    data = [torch.randn(16, 3, 10, 10) * 2 + 1 for _ in range(3)]
    reference = copy.deepcopy(model)
    bnkit.recalibrate(model, data, progress=False)
    for p, pointer, stride, values in weights:  # the very same storage, layout and values
        assert (p.data_ptr(), p.stride()) == (pointer, stride)
        assert torch.equal(p, values)
    # the default-layout pass (what `cumulative` and accelerators run) agrees to rounding
    from bnkit.stats import layout as _layout

    with pytest.MonkeyPatch.context() as mp:
        module = sys.modules["bnkit.stats.recalibrate"]
        mp.setattr(module, "wants_channels_last", lambda *a: False)
        bnkit.recalibrate(reference, data, progress=False)
    assert _layout.wants_channels_last(model, None)
    for a, b in zip(model.buffers(), reference.buffers(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_model_that_needs_its_own_layout_falls_back() -> None:
    torch.manual_seed(0)
    model = _ViewHead().eval()
    data = [torch.randn(8, 3, 8, 8) for _ in range(3)]
    bnkit.recalibrate(model, data, progress=False)
    h = model.conv(torch.cat(data)).permute(0, 1, 3, 2)
    torch.testing.assert_close(model.bn.running_mean, h.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert int(model.bn.num_batches_tracked) == 3
