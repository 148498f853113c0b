"""The same guarantees on CUDA (run where a GPU is present; skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch
from tests.helpers import assert_bitwise, make_layer, managed_copy, native_twin, step

import bnkit

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize(
    "preset", ["pytorch", "frozen", "frozen_stats", "frozen_affine", "batch_stats"]
)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_presets_are_bitwise_native_on_cuda(
    preset: str, training: bool, channels_last: bool
) -> None:
    layer = make_layer(4, 8).cuda()
    policy = bnkit.preset(preset)
    ours = managed_copy(layer, policy).train(training)
    twin = native_twin(layer, policy, training)
    assert twin is not None
    for seed in range(2):
        x = torch.randn(4, 8, 6, 6, generator=torch.Generator().manual_seed(seed)).cuda()
        if channels_last:
            x = x.to(memory_format=torch.channels_last)
        assert_bitwise(step(ours, x, seed), step(twin, x, seed))


@pytest.mark.parametrize("preset", ["adapt", "renorm", "ghost", "prior"])
def test_strategies_match_the_reference_on_cuda(preset: str) -> None:
    layer = managed_copy(make_layer(4, 8), bnkit.preset(preset)).cuda().train()
    x = torch.randn(20, 8, 5, 5, device="cuda") * 2 + 1
    ref = bnkit.reference.reference_step(layer, x)
    torch.testing.assert_close(layer(x).double(), ref.output.detach(), rtol=2e-4, atol=2e-5)
    assert ref.new_running_mean is not None
    torch.testing.assert_close(
        layer.running_mean.double(), ref.new_running_mean, rtol=2e-4, atol=2e-5
    )  # type: ignore[union-attr]


def test_nonfinite_batch_is_skipped_on_the_device() -> None:
    layer = managed_copy(make_layer(4, 8), "pytorch").cuda().train()
    before = [b.clone() for b in layer.buffers()]
    x = torch.randn(4, 8, 5, 5, device="cuda")
    x[0, 3, 0, 0] = float("nan")
    layer(x)
    assert all(torch.equal(a, b) for a, b in zip(before, layer.buffers(), strict=True))
