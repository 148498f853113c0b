"""The training loop's schedule and early stop, and BN-only parameters."""

from __future__ import annotations

import itertools

import pytest
import torch

import bnkit
from bnkit.study.models.resnet import build_model
from bnkit.study.models.training import batches, fit, lr_at, only_bn_affine


def test_warmup_then_cosine_to_zero() -> None:
    lrs = [lr_at(i, 1.0, 100, 10, "cosine") for i in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] < 0.01
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lr_at(50, 0.3, 100, 10, "constant") == 0.3


def test_batches_cover_every_sample_equally_often() -> None:
    got = torch.cat(batches(10, 5, 4, torch.Generator().manual_seed(0)))
    assert torch.bincount(got, minlength=10).tolist() == [2] * 10


def test_on_eval_is_called_in_eval_mode_and_can_stop_training() -> None:
    torch.manual_seed(0)
    model = build_model("bn", width=4)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    seen: list[tuple[int, bool]] = []

    def on_eval(step: int) -> bool:
        seen.append((step, model.training))
        return step < 6

    fit(model, x, y, steps=20, batch_size=4, lr=0.01, generator=torch.Generator(), every=3,
        on_eval=on_eval)  # fmt: skip
    assert seen == [(3, False), (6, False)] and not model.training


def test_only_bn_affine_leaves_gamma_and_beta_trainable() -> None:
    model = build_model("bn", width=4)
    params = only_bn_affine(model)
    assert len(params) == 2 * len(list(bnkit.bn_layers(model)))
    assert {id(p) for p in model.parameters() if p.requires_grad} == {id(p) for p in params}
