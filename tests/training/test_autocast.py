"""Mixed precision: every preset under CPU bfloat16 autocast matches nn.BatchNorm under autocast
where PyTorch can express it, and the float64 reference elsewhere; statistics stay float32."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from tests.helpers import native_twin, randomize

import bnkit
from bnkit.reference import reference_forward


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4))
    randomize(net[1])
    return net


@pytest.mark.parametrize("name", bnkit.presets())
@pytest.mark.parametrize("training", [True, False])
def test_every_preset_under_bfloat16_autocast(name: str, training: bool) -> None:
    policy = bnkit.preset(name)
    net = _net()
    pristine = copy.deepcopy(net[1])
    bnkit.apply(net, policy).train(training)
    x = torch.randn(6, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * 2 + 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = net[0](x)
        y = net[1](h)
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16  # as nn.BatchNorm gives
    assert net[1].running_mean.dtype == torch.float32  # statistics accumulate in float32
    twin = native_twin(pristine, policy, training)
    if twin is not None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            expected = twin(h)
        assert torch.equal(y, expected)
        assert torch.equal(net[1].running_mean, twin.running_mean)
        assert torch.equal(net[1].running_var, twin.running_var)
        return
    ref = reference_forward(
        policy, h.float(), training=training, weight=pristine.weight, bias=pristine.bias,
        running_mean=pristine.running_mean, running_var=pristine.running_var,
        num_batches_tracked=int(pristine.num_batches_tracked), momentum=pristine.momentum,
    )  # fmt: skip
    torch.testing.assert_close(y.double(), ref.output.detach(), rtol=5e-2, atol=5e-2)
    assert ref.new_running_mean is not None
    torch.testing.assert_close(
        net[1].running_mean.double(), ref.new_running_mean, rtol=1e-2, atol=1e-2
    )
