"""Models and statistic sets saved with bnkit 0.1 still load and behave as they did."""

from __future__ import annotations

from pathlib import Path

import torch

import bnkit

DATA = Path(__file__).parent / "data"


def test_model_pickled_by_bnkit_0_1_loads_with_its_policies() -> None:
    saved = torch.load(DATA / "bnkit01_model.pt", weights_only=False)
    model = saved["model"]
    policies = {name: repr(p) for name, p in bnkit.managed_layers(model)}
    assert policies == saved["policies"]
    assert torch.equal(model.eval()(saved["input"]), saved["output"])
    assert bnkit.distributed.is_synchronized(model[6])
    before = model[1].running_mean.clone()
    model.train()(saved["input"])
    assert torch.equal(model[1].running_mean, before)  # still frozen
    bnkit.unfreeze(model)
    assert type(model[1]) is torch.nn.BatchNorm2d
    assert model[2].momentum == 0.1


def test_statset_saved_by_bnkit_0_1_loads_weights_only() -> None:
    stats = bnkit.StatSet.load(DATA / "bnkit01_statset.pt")
    assert isinstance(stats, bnkit.StatSet)
    assert sorted(stats.layers) == ["1", "2", "5", "6"]
