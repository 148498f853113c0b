"""Activation checkpointing: the recomputed forward updates nothing a second time, and outputs,
gradients and buffers equal the run without checkpointing (the oracle)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from tests.helpers import randomize
from torch.utils.checkpoint import checkpoint

import bnkit

POLICIES = {
    "pytorch": bnkit.preset("pytorch"),
    "adapt": bnkit.preset("adapt"),
    "renorm": bnkit.preset("renorm", r_max=1.5, d_max=0.5, renorm_warmup=1, renorm_ramp=2),
    "prior": bnkit.preset("prior", prior_strength=8.0, update="ema"),
    "ghost": bnkit.preset("ghost", ghost_size=3),
    "cumulative": bnkit.Policy(update="cumulative"),
    "frozen": bnkit.preset("frozen"),
}


class Segmented(nn.Module):
    """Two blocks, each run under torch.utils.checkpoint when asked."""

    def __init__(self, reentrant: bool | None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.reentrant = reentrant
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
            for c in (3, 4)
        )
        for block in self.blocks:
            randomize(block[1])
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.reentrant is None:
                x = block(x)
            else:
                x = checkpoint(block, x, use_reentrant=self.reentrant)
        return self.head(x.mean((2, 3)))


def _train(model: Segmented, steps: int = 3) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(1)
    for step in range(steps):
        x = (torch.randn(7, 3, 5, 5, generator=g) * 2 + 1).requires_grad_()
        y = model(x)
        (y * torch.arange(1.0, 3.0)).sum().backward()
        out[f"y{step}"] = y.detach()
        assert x.grad is not None
        out[f"dx{step}"] = x.grad
    for name, p in model.named_parameters():
        assert p.grad is not None or not p.requires_grad, name
        if p.grad is not None:
            out[f"grad.{name}"] = p.grad
    for name, b in model.named_buffers():
        out[name] = b
    return out


@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize("name", list(POLICIES))
def test_checkpointed_training_equals_the_plain_run(reentrant: bool, name: str) -> None:
    plain = Segmented(None)
    checkpointed = copy.deepcopy(plain)
    checkpointed.reentrant = reentrant
    bnkit.apply(plain, POLICIES[name])
    bnkit.apply(checkpointed, POLICIES[name])
    expected, got = _train(plain.train()), _train(checkpointed.train())
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-6, atol=1e-6, msg=key)
    steps = 3 if POLICIES[name].updates(True) else 0
    assert int(checkpointed.blocks[0][1].num_batches_tracked) == steps + 3  # not 2 per step


def test_plain_layers_are_managed_to_be_checkpoint_safe() -> None:
    # a plain nn.BatchNorm2d updates twice under checkpointing; bnkit's pytorch preset once
    native = Segmented(True)
    managed = bnkit.apply(copy.deepcopy(native), "pytorch")
    _train(native.train(), steps=1)
    _train(managed.train(), steps=1)
    assert int(native.blocks[0][1].num_batches_tracked) == 3 + 2
    assert int(managed.blocks[0][1].num_batches_tracked) == 3 + 1


@pytest.mark.parametrize("reentrant", [True, False])
def test_two_forwards_then_their_backwards_in_reverse_order_are_exact_and_warned(
    reentrant: bool,
) -> None:
    plain = bnkit.apply(Segmented(None), "adapt").train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.reentrant = reentrant
    g = torch.Generator().manual_seed(2)
    xs = [torch.randn(4, 3, 5, 5, generator=g).requires_grad_() for _ in range(2)]
    for model in (plain, checkpointed):
        ys = [model(x) for x in xs]  # the second forward updates before the first backward
        ys[1].sum().backward()
        if model is checkpointed:
            with pytest.warns(RuntimeWarning, match="updated again between a forward and"):
                ys[0].sum().backward()
        else:
            ys[0].sum().backward()
    for p, q in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)  # exact: reverse order
