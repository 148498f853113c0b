"""``torch.compile(fullgraph=True)`` on one real model per library, under a bnkit preset.

Two train steps and an eval forward of the compiled model against the same trajectory in
eager mode: no graph break, and the same outputs, gradients and buffers. ``aot_eager`` runs the
traced graph with eager kernels (cheap to compile); one model also goes through inductor.
"""

from __future__ import annotations

import copy

import pytest
import torch
from tests.integration.runs import Trajectory, trajectory
from tests.integration.zoo import Zoo, built, by_name

import bnkit

CASES = [
    ("torchvision/resnet18", "frozen", "aot_eager"),
    ("timm/mobilenetv3_small_100", "frozen", "aot_eager"),
    ("monai/UNet", "pytorch", "aot_eager"),
    ("transformers/ResNet", "frozen_stats", "aot_eager"),
    ("pyg/GIN", "pytorch", "inductor"),
    ("tabnet/TabNet", "frozen", "aot_eager"),
]


def _unprefixed(run: Trajectory) -> Trajectory:
    strip = "_orig_mod."
    return Trajectory(
        outputs=run.outputs,
        grads=[{k.removeprefix(strip): v for k, v in g.items()} for g in run.grads],
        buffers=[{k.removeprefix(strip): v for k, v in b.items()} for b in run.buffers],
    )


def _close(ours: Trajectory, eager: Trajectory) -> None:
    for a, b in zip(ours.outputs, eager.outputs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))
    for ga, gb in zip(ours.grads, eager.grads, strict=True):
        assert ga.keys() == gb.keys()
        # A bias right before BatchNorm gets a gradient of exactly 0 in theory: rounding noise
        # in practice, so tolerances are relative to the largest gradient of the step.
        scale = max(float(g.abs().max()) for g in gb.values() if g is not None)
        for name, g in gb.items():
            assert (ga[name] is None) == (g is None), name
            if g is not None:
                torch.testing.assert_close(ga[name], g, rtol=1e-3, atol=1e-5 * scale)
    for ba, bb in zip(ours.buffers, eager.buffers, strict=True):
        assert ba.keys() == bb.keys()
        for name, b in bb.items():
            torch.testing.assert_close(ba[name], b, rtol=1e-4, atol=1e-5)


# TabNet's sparsemax instantiates an autograd.Function, which dynamo reports as a warning.
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
@pytest.mark.parametrize(
    ("zoo", "preset", "backend"), [(by_name(n), p, b) for n, p, b in CASES], ids=str
)
def test_compiles_fullgraph_and_trains_as_eager(zoo: Zoo, preset: str, backend: str) -> None:
    torch._dynamo.reset()
    eager = bnkit.apply(copy.deepcopy(built(zoo)), preset)
    model = copy.deepcopy(eager)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    _close(_unprefixed(trajectory(compiled, zoo)), trajectory(eager, zoo))
