"""torch.compile(fullgraph=True): every preset compiles without graph breaks, matching eager."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from tests.helpers import randomize

import bnkit


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, bias=False),
        randomize(nn.BatchNorm2d(6)),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 4 * 4, 4),
        randomize(nn.BatchNorm1d(4), seed=1),
    )


POLICIES = [
    *bnkit.presets(),
    bnkit.Policy(update="cumulative"),
    bnkit.preset("renorm", renorm_warmup=1, renorm_ramp=2),
    bnkit.preset("prior", update="ema"),
    bnkit.preset("ghost", ghost_size=2),
]


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> None:
    torch._dynamo.reset()


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
@pytest.mark.parametrize("policy", POLICIES, ids=str)
def test_compiles_fullgraph_and_matches_eager(backend: str, policy: bnkit.Policy | str) -> None:
    eager = bnkit.apply(model(), policy)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model, fullgraph=True, backend=backend)
    for training in (True, False, True):
        eager.train(training)
        compiled_model.train(training)
        x = torch.randn(6, 3, 6, 6)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = eager(xa), compiled(xb)
        torch.testing.assert_close(yb, ya, rtol=1e-4, atol=1e-5)
        ya.square().sum().backward()
        yb.square().sum().backward()
        torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-5)
    for a, b in zip(eager.buffers(), compiled_model.buffers(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
