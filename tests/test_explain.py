"""explain(): the numbers, the text, the demo."""

from __future__ import annotations

import json

import torch
import torch.nn as nn
from tests.helpers import randomize

import bnkit
from bnkit.cli._demo import PRINTED_INPUT, PRINTED_OUTPUT, demo_input, demo_layer, demo_text


def test_demo_input_prints_as_the_example_and_output_matches_every_digit() -> None:
    x, bn = demo_input(), demo_layer()
    printed_x = torch.tensor(PRINTED_INPUT).reshape(1, 2, 3, 3)
    printed_y = torch.tensor(PRINTED_OUTPUT).reshape(1, 2, 3, 3)
    assert torch.equal(torch.round(x * 1e4), torch.round(printed_x * 1e4))
    with torch.no_grad():
        y = bn(x)
    assert torch.equal(torch.round(y * 1e4), torch.round(printed_y * 1e4))
    assert torch.equal(torch.round(bn.weight.detach() * 1e4), torch.tensor([8352.0, 2056.0]))


def test_demo_text_tells_the_story() -> None:
    text = demo_text()
    assert "would turn the first value\n-0.0403 into -0.0337" in text
    assert "The layer returns -1.6799" in text
    assert "matches the printed output of the example in 18 of 18 values" in text
    assert "mean           = 0.0118673  (batch statistic)" in text
    assert "var · 9/8" in text


def test_explain_running_statistics_in_eval_and_does_not_change_the_layer() -> None:
    bn = randomize(nn.BatchNorm2d(3)).eval()
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    x = torch.randn(2, 3, 4, 4)
    e = bnkit.explain(bn, x, name="stem.bn")
    assert e.step.used == "running"
    assert not e.step.updated
    assert torch.equal(e.output, bn(x))
    assert e.max_abs_diff < 1e-5
    assert all(torch.equal(before[k], v) for k, v in bn.state_dict().items())
    text = str(e)
    assert "BatchNorm2d 'stem.bn'" in text and "no update on this forward" in text


def test_explain_adapt_shows_the_update_it_would_make() -> None:
    bn = bnkit.apply(randomize(nn.BatchNorm1d(2)), "adapt").train()
    e = bnkit.explain(bn, torch.randn(6, 2))
    d = e.to_dict()
    assert d["normalized_with"] == "running"
    assert d["update"]["happens"] and d["update"]["rule"] == "ema"
    assert d["update"]["factor"] == 0.01
    assert d["update"]["num_batches_tracked"] == [3, 4]
    assert json.loads(json.dumps(d)) == d
    assert "EMA, momentum 0.01" in str(e)


def test_explain_large_input_is_summarised() -> None:
    e = bnkit.explain(nn.BatchNorm2d(20), torch.randn(4, 20, 8, 8))
    text = str(e)
    assert "… 12 more channels" in text
    assert "(256 values)" in text


def test_explain_shows_each_strategy_with_its_numbers() -> None:
    x = torch.randn(10, 2) * 3 + 1
    renorm = bnkit.apply(randomize(nn.BatchNorm1d(2)), bnkit.preset("renorm", r_max=1.2))
    text = str(bnkit.explain(renorm.train(), x))
    assert "r clipped to [1/1.2, 1.2]" in text and "x̂ = (x − mean)/√(var + eps)·r + d" in text
    ghost = bnkit.apply(randomize(nn.BatchNorm1d(2)), bnkit.preset("ghost", ghost_size=4))
    e = bnkit.explain(ghost.train(), x)
    assert "ghost batches of 4 samples: 3 groups" in str(e) and "mean per ghost" in str(e)
    assert e.to_dict()["details"]["sizes"] == [4, 4, 2]
    prior = bnkit.apply(randomize(nn.BatchNorm1d(2)), "prior")
    e = bnkit.explain(prior.eval(), x)
    assert "prior weight w = N/(N+n) = 16/(16+10) = 0.615385" in str(e)
    for layer in (renorm, ghost, prior):
        assert bnkit.explain(layer, x).max_abs_diff < 1e-5
