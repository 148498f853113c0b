"""bnkit.report: what each row claims is what the layer does (checked by running it)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from tests.diagnostics.models import clean, cnn
from tests.helpers import randomize
from torch.nn.modules.batchnorm import _BatchNorm

import bnkit
from bnkit.layers import select as _surgery


def observed(layer: _BatchNorm, x: torch.Tensor) -> tuple[str, bool]:
    """Which statistics the layer really normalizes with, and whether its statistics move."""
    twin = copy.deepcopy(layer)
    before = (twin.running_mean, twin.running_var)
    before = tuple(None if t is None else t.clone() for t in before)
    with torch.no_grad():
        y = twin(x)
        w, b = layer.weight, layer.bias
        with_batch = F.batch_norm(x, None, None, w, b, True, 0.0, layer.eps)
    used = "batch" if torch.allclose(y, with_batch, atol=1e-5) else "running"
    after = (twin.running_mean, twin.running_var)
    moved = any(
        a is not None and o is not None and not torch.equal(a, o)
        for a, o in zip(after, before, strict=True)
    )
    return used, moved


@given(
    training=st.booleans(),
    momentum=st.sampled_from([0.1, 0.0, None, 1.0]),
    tracking=st.sampled_from(["on", "off-after", "off-built"]),
    policy=st.sampled_from([None, "pytorch", "frozen", "frozen_stats", "adapt", "batch_stats"]),
)
def test_rows_match_what_layers_do(
    training: bool, momentum: float | None, tracking: str, policy: str | None
) -> None:
    layer = (
        randomize(nn.BatchNorm1d(3))
        if tracking != "off-built"
        else nn.BatchNorm1d(3, track_running_stats=False)
    )
    layer.momentum = momentum
    if tracking == "off-after":
        layer.track_running_stats = False
    if policy is not None:
        try:
            bnkit.apply(layer, policy)
        except bnkit.LayerError:
            return  # a policy that needs running statistics on a layer without them
    layer.train(training)
    row = bnkit.report(layer)[""]
    used, moved = observed(layer, torch.randn(16, 3) * 2 + 1)
    assert (row.normalizes_with, row.updates) == (used, moved)
    assert row.training is training and row.cls == "BatchNorm1d"
    assert (row.policy is not None) == (policy is not None)


def test_row_contents() -> None:
    model = clean()
    bnkit.freeze(model, where="4")
    model[9].eval()
    rep = bnkit.report(model)
    assert [r.name for r in rep] == ["1", "4", "9"] and len(rep) == 3
    one, four, nine = rep["1"], rep["4"], rep["9"]
    assert one.behaviour == "normalize with batch stats, EMA update (momentum 0.1), " + (
        "gamma/beta trainable"
    )
    assert one.num_batches_tracked == 8 and one.stats_updated and one.finite
    assert one.mean_var == pytest.approx(float(model[1].running_var.mean()))
    assert one.min_var == pytest.approx(float(model[1].running_var.min()))
    assert one.mean_abs_mean == pytest.approx(float(model[1].running_mean.abs().mean()))
    assert four.policy == "bnkit.preset('frozen')" and four.affine == "frozen"
    assert four.normalizes_with == "running" and four.updates is False and four.cls == "BatchNorm2d"
    assert nine.training is False and nine.normalizes_with == "running" and nine.policy is None


def test_odd_flags_are_shown_not_hidden() -> None:
    mixed = randomize(nn.BatchNorm1d(2))
    mixed.bias.requires_grad_(False)
    row = bnkit.report(mixed)[""]
    assert row.affine == "gamma trainable, beta frozen" and "bias.requires_grad=False" in row.note
    assert row.behaviour.endswith("gamma trainable, beta frozen")
    wild = randomize(nn.BatchNorm1d(2), seed=1)
    wild.momentum = 1.5
    row = bnkit.report(wild)[""]
    assert "momentum=1.5" in row.note and row.behaviour.startswith(
        "normalize with batch stats, EMA update (momentum 1.5)"
    )


def test_layers_without_statistics_or_affine() -> None:
    model = nn.Sequential(
        nn.BatchNorm1d(2, affine=False),
        nn.BatchNorm1d(2, track_running_stats=False),
        nn.LazyBatchNorm1d(),
        nn.SyncBatchNorm(2),
    ).eval()
    rep = bnkit.report(model)
    assert rep["0"].affine == "none" and rep["0"].stats_updated is False
    assert rep["1"].normalizes_with == "batch" and rep["1"].mean_var is None
    assert rep["1"].cells()["running stats"] == "none"
    assert rep["2"].num_features == 0 and rep["2"].mean_var is None
    assert rep["3"].cls == "SyncBatchNorm"
    json.loads(rep.to_json())


def test_registered_frozen_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    class FrozenBN(nn.Module):
        _bnkit_frozen_policy = bnkit.preset("frozen")

        def __init__(self, c: int) -> None:
            super().__init__()
            self.num_features = c
            self.eps = 1e-5
            for name, value in (("weight", 1.0), ("bias", 0.0), ("running_mean", 0.5)):
                self.register_buffer(name, torch.full((c,), value))
            self.register_buffer("running_var", torch.full((c,), 2.0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias)

    monkeypatch.setattr(_surgery, "_EXTRA_BN_TYPES", [FrozenBN])
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), FrozenBN(4)).train()
    row = bnkit.report(model)["1"]
    assert row.policy == "bnkit.preset('frozen')" and row.normalizes_with == "running"
    assert row.affine == "none" and row.mean_var == 2.0 and row.num_batches_tracked is None
    assert bnkit.check(model) == []
    # its statistics (mean 0.5, var 2) are not those of this random conv's output
    assert [f.kind for f in bnkit.check(model, torch.randn(16, 3, 6, 6))] == ["domain_shift"]


def test_rendering_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    model = cnn().eval()
    model[1].running_var[0] = float("nan")
    rep = bnkit.report(model)
    text = str(rep)
    assert text.startswith("BatchNorm layers of Sequential (model in eval(), 3 layers)")
    assert "NON-FINITE" in text and "never updated (mean 0, var 1)" in text
    data = json.loads(rep.to_json())
    assert data["layers"][0]["finite"] is False and data["layers"][0]["mean_var"] is None
    assert data["layers"][1]["stats_updated"] is False
    rep.print()
    assert "layer" in capsys.readouterr().out
    with pytest.raises(bnkit.errors.SelectionError, match="no BatchNorm layer named 'x'"):
        rep["x"]
    assert str(bnkit.report(nn.Linear(2, 2))).endswith("0 layers): (none)")
