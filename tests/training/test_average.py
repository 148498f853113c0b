"""Weight averaging: bnkit.average_stats averages the running statistics with the weights' rule,
whatever the helper does to the buffers (oracle: an explicit average of the snapshots'
buffers); bnkit.recalibrate gives an averaged model the population statistics (oracle: a
float64 pass over the data)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn as nn
from tests.torchvision_shim import install
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

import bnkit
from bnkit.errors import LayerError, PolicyError

EPOCHS = 4


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(3, 6, bias=False),
        nn.BatchNorm1d(6),
        nn.ReLU(),
        nn.Linear(6, 4, bias=False),
        nn.BatchNorm1d(4),
    )


def _stats(model: nn.Module) -> dict[str, Tensor]:
    return {
        k: v.detach().double().clone()
        for k, v in model.state_dict().items()
        if k.endswith(("running_mean", "running_var"))
    }


def _counters(model: nn.Module) -> dict[str, int]:
    return {k: int(v) for k, v in model.state_dict().items() if k.endswith("num_batches_tracked")}


def _train(
    model: nn.Module, averaging_step: Callable[[], None], epochs: int = EPOCHS
) -> list[dict[str, Tensor]]:
    """Train a few steps per epoch on drifting data, average after each epoch; the snapshots
    of the model's running statistics at each averaging step."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    snapshots = []
    for epoch in range(epochs):
        for _ in range(2):
            x = torch.randn(16, 3, generator=g) * (1 + epoch) + epoch
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        snapshots.append(_stats(model))
        averaging_step()
    return snapshots


def _close(got: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert got.keys() == expected.keys()
    for key in got:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-7, msg=key)


def _swa(snapshots: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {k: torch.stack([s[k] for s in snapshots]).mean(0) for k in snapshots[0]}


def _ema(start: dict[str, Tensor], snapshots: list[dict[str, Tensor]], decay: float) -> Any:
    out = dict(start)
    for s in snapshots:
        out = {k: decay * out[k] + (1 - decay) * s[k] for k in out}
    return out


@pytest.mark.parametrize("use_buffers", [False, True])
def test_swa_with_averaged_model_is_the_mean_of_the_snapshots(use_buffers: bool) -> None:
    model = _net()
    swa = AveragedModel(model, use_buffers=use_buffers)

    def step() -> None:
        with bnkit.average_stats(swa, model):
            swa.update_parameters(model)

    snapshots = _train(model, step)
    _close(_stats(swa.module), _swa(snapshots))
    assert _counters(swa.module) == _counters(model)  # the model's, not an average of counters


def test_ema_with_averaged_model_follows_the_weights_rule() -> None:
    model, decay = _net(), 0.7
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    weights: list[Tensor] = []

    def step() -> None:
        with bnkit.average_stats(ema, model, decay=decay):
            ema.update_parameters(model)
        weights.append(model[0].weight.detach().double().clone())

    snapshots = _train(model, step)
    # AveragedModel copies the first model, then takes EMA steps: the statistics do the same
    _close(_stats(ema.module), _ema(snapshots[0], snapshots[1:], decay))
    expected_weight = weights[0]
    for w in weights[1:]:
        expected_weight = decay * expected_weight + (1 - decay) * w
    torch.testing.assert_close(ema.module[0].weight.double(), expected_weight)


@pytest.mark.parametrize("helper", ["ModelEmaV2", "ModelEmaV3", "ModelEmaV3-exclude_buffers"])
def test_timm_model_ema_with_its_own_decay(helper: str) -> None:
    install()
    from timm.utils import model_ema

    model = _net()
    name, _, option = helper.partition("-")
    kwargs = {option: True} if option else {}
    ema = getattr(model_ema, name)(model, decay=0.8, **kwargs)
    start = _stats(ema.module)  # timm starts from a copy of the model as built

    def step() -> None:
        with bnkit.average_stats(ema, model):  # decay read from the helper
            ema.update(model)

    snapshots = _train(model, step)
    _close(_stats(ema.module), _ema(start, snapshots, 0.8))


def _lerp(averaged: nn.Module, model: nn.Module) -> None:
    with torch.no_grad():
        for a, p in zip(averaged.parameters(), model.parameters(), strict=True):
            a.lerp_(p, 0.5)


def test_a_plain_second_model_averaged_by_hand() -> None:
    model = _net()
    averaged, parameters_only = copy.deepcopy(model), copy.deepcopy(model)
    start = _stats(averaged)

    def step() -> None:
        _lerp(parameters_only, model)  # what a weight-only EMA does
        with bnkit.average_stats(averaged, model, decay=0.5):
            _lerp(averaged, model)

    snapshots = _train(model, step)
    _close(_stats(averaged), _ema(start, snapshots, 0.5))
    assert bnkit.check(averaged.eval()) == []
    stale = bnkit.check(parameters_only.eval())
    assert [(f.kind, f.layers) for f in stale] == [("weights_without_stats", ("1", "4"))]

    counted = copy.deepcopy(model)
    k = 0

    def swa_step() -> None:
        nonlocal k
        k += 1
        with bnkit.average_stats(counted, model, count=k):
            pass

    snapshots = _train(model, swa_step)
    _close(_stats(counted), _swa(snapshots))


def test_managed_layers_and_where() -> None:
    model = bnkit.apply(_net(), "pytorch")
    swa = AveragedModel(model)
    before = _stats(swa.module)

    def step() -> None:
        with bnkit.average_stats(swa, model, where="1"):
            swa.update_parameters(model)

    snapshots = _train(model, step)
    got, expected = _stats(swa.module), _swa(snapshots)
    for key in ("1.running_mean", "1.running_var"):
        torch.testing.assert_close(got[key], expected[key])
    # layer 4 is not selected: AveragedModel(use_buffers=False) copied the model's last ones
    torch.testing.assert_close(got["4.running_mean"], snapshots[-1]["4.running_mean"])
    assert not torch.equal(got["4.running_mean"], before["4.running_mean"])


def _enter(averaged: nn.Module, model: nn.Module, **kwargs: Any) -> None:
    with bnkit.average_stats(averaged, model, **kwargs):
        pass


def test_refusals() -> None:
    model = _net()
    model(torch.randn(8, 3))
    plain = copy.deepcopy(model)
    with pytest.raises(LayerError, match="needs the rule"):
        _enter(plain, model)
    with pytest.raises(PolicyError, match="give the averaging rule once"):
        _enter(plain, model, decay=0.9, count=2)
    with pytest.raises(PolicyError, match=r"decay must be a number in \[0, 1\]"):
        _enter(plain, model, decay=1.5)
    with pytest.raises(PolicyError, match="count must be a positive integer"):
        _enter(plain, model, count=0)
    with pytest.raises(LayerError, match="its own function"):
        _enter(AveragedModel(model, avg_fn=lambda a, m, n: (a + m) / 2), model)
    other = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5))
    with pytest.raises(LayerError, match=r"layer '1'.*5 channels.*6"):
        _enter(other, model, decay=0.9)
    with pytest.raises(LayerError, match="did not average"):
        _enter(AveragedModel(model), model)  # update_parameters forgotten


def _failing_step(swa: AveragedModel, model: nn.Module) -> None:
    with bnkit.average_stats(swa, model):
        swa.update_parameters(model)  # copies the model's buffers (use_buffers=False)...
        raise RuntimeError("boom")


def _step(swa: AveragedModel, model: nn.Module) -> None:
    with bnkit.average_stats(swa, model):
        swa.update_parameters(model)


def test_a_failed_block_or_nonfinite_statistics_leave_the_average_as_it_was() -> None:
    model = _net()
    model(torch.randn(8, 3))
    swa = AveragedModel(model)
    swa.update_parameters(model)
    before = _stats(swa.module)
    model(torch.randn(8, 3) + 3)
    with pytest.raises(RuntimeError, match="boom"):
        _failing_step(swa, model)
    _close(_stats(swa.module), before)  # ...and the average is put back
    model[1].running_var[0] = float("nan")
    with pytest.raises(LayerError, match=r"layer '1'.*NaN/Inf"):
        _step(swa, model)
    _close(_stats(swa.module), before)


def _population(model: nn.Module, data: list[Tensor]) -> dict[str, Tensor]:
    """Float64 oracle: every BatchNorm layer normalizes with its batch statistics; the mean and
    unbiased variance of each layer's input over all the data."""
    oracle = copy.deepcopy(model).double().eval()
    sums: dict[str, list[Any]] = {}
    for name, m in oracle.named_modules():
        if isinstance(m, _BatchNorm):
            m.train()
            m.track_running_stats, m.running_mean, m.running_var = False, None, None

            def hook(module: nn.Module, args: tuple[Tensor], name: str = name) -> None:
                x = args[0].detach()
                s = sums.setdefault(name, [0.0, 0.0, 0])
                s[0], s[1], s[2] = s[0] + x.sum(0), s[1] + x.square().sum(0), s[2] + x.shape[0]

            m.register_forward_pre_hook(hook)
    with torch.no_grad():
        for x in data:
            oracle(x.double())
    out = {}
    for name, (total, squares, n) in sums.items():
        mean = total / n
        out[f"{name}.running_mean"] = mean
        out[f"{name}.running_var"] = (squares - n * mean.square()) / (n - 1)
    return out


def test_recalibrating_an_averaged_model_gives_its_population_statistics() -> None:
    model = _net()
    swa = AveragedModel(model)
    _train(model, lambda: swa.update_parameters(model))
    g = torch.Generator().manual_seed(5)
    data = [torch.randn(n, 3, generator=g) * 2 + 1 for n in (16, 9, 23)]
    bnkit.recalibrate(swa, data, progress=False)
    got, expected = _stats(swa.module), _population(swa.module, data)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=2e-6, atol=1e-6, msg=key)
