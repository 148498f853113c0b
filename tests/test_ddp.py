"""DDP wrapping of managed models (one gloo process here; several in the distributed suites)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from tests.helpers import randomize

import bnkit

pytestmark = pytest.mark.distributed


@pytest.fixture
def process_group(tmp_path: Path) -> Iterator[None]:
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("preset", bnkit.presets()[:6])
def test_ddp_wrapped_model_follows_its_policy(process_group: None, preset: str) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), randomize(nn.BatchNorm2d(4)), nn.ReLU())
    bnkit.apply(net, preset)
    ddp = nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    ddp.train()
    for _ in range(2):
        opt.zero_grad()
        ddp(torch.randn(4, 3, 5, 5)).square().mean().backward()
        opt.step()
    assert bnkit.policy_of(net[1]) == bnkit.preset(preset)
    # selections see through the wrapper
    bnkit.apply(ddp, "frozen", where="1")
    assert bnkit.managed_layers(ddp) == [("1", bnkit.preset("frozen"))]
