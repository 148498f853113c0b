"""Real models through bnkit and back: state_dicts, frozen exports, SyncBatchNorm.

Whatever bnkit does to a model, the ``state_dict`` keeps its keys and values both ways (strict
loading), and undoing it leaves a model that trains bit for bit as the untouched one.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from tests.integration.runs import assert_same, native_run, trajectory
from tests.integration.zoo import ZOO, Zoo, bn_modules, built, output

import bnkit

WITH_BN = [z for z in ZOO if z.name != "transformers/DETR"]


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("zoo", WITH_BN, ids=str)
def test_freeze_state_dict_both_ways_then_unfreeze_is_untouched(zoo: Zoo) -> None:
    model = built(zoo)
    ours = bnkit.freeze(copy.deepcopy(model))
    _same_state(ours.state_dict(), model.state_dict())
    plain = copy.deepcopy(model)
    plain.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(model.state_dict(), strict=True)
    bnkit.unfreeze(ours)
    for (_, a), (_, b) in zip(bn_modules(ours), bn_modules(model), strict=True):
        assert type(a) is type(b) and a.momentum == b.momentum
        assert [p.requires_grad for p in a.parameters()] == [
            p.requires_grad for p in b.parameters()
        ]
    assert_same(trajectory(ours, zoo), native_run(zoo, "pytorch"))


@pytest.mark.parametrize("zoo", WITH_BN, ids=str)
def test_frozen_export_is_eval_batchnorm_and_comes_back(zoo: Zoo) -> None:
    model = built(zoo)
    frozen = bnkit.to_frozen(copy.deepcopy(model))
    assert not bn_modules(frozen)  # every layer is a frozen export now
    with torch.no_grad():
        torch.testing.assert_close(
            output(frozen.eval(), zoo), output(copy.deepcopy(model).eval(), zoo), rtol=0, atol=0
        )
    # Training: a frozen export is the `frozen` preset as plain PyTorch expresses it.
    ours, theirs = trajectory(frozen, zoo), native_run(zoo, "frozen")
    for a, b in zip(ours.outputs, theirs.outputs, strict=True):
        assert torch.equal(a, b)
    for ga, gb in zip(ours.grads, theirs.grads, strict=True):
        assert all(torch.equal(g, gb[n]) for n, g in ga.items() if g is not None)
    # state_dict: loads a BatchNorm checkpoint strictly, and back (num_batches_tracked kept)
    frozen.load_state_dict(model.state_dict(), strict=True)
    back = bnkit.from_frozen(frozen)
    _same_state(back.state_dict(), model.state_dict())
    assert [type(m) for _, m in bn_modules(back)] == [type(m) for _, m in bn_modules(model)]
    assert_same(trajectory(back, zoo), native_run(zoo, "pytorch"))


@pytest.mark.parametrize("zoo", WITH_BN, ids=str)
def test_sync_conversion_trains_the_same_alone_and_comes_back(zoo: Zoo) -> None:
    model = built(zoo)  # timm's BatchNormAct2d included: its activation runs after SyncBatchNorm
    synced = bnkit.to_sync(copy.deepcopy(model))
    assert all(isinstance(m, nn.SyncBatchNorm) for _, m in bn_modules(synced))
    _same_state(synced.state_dict(), model.state_dict())
    # Without a process group SyncBatchNorm is plain BatchNorm: the same numbers.
    assert_same(trajectory(synced, zoo), native_run(zoo, "pytorch"))
    back = bnkit.from_sync(synced)
    assert [type(m) for _, m in bn_modules(back)] == [type(m) for _, m in bn_modules(model)]


def test_detr_has_no_batchnorm_bnkit_can_manage() -> None:
    """DETR replaces its backbone's BatchNorm2d by its own frozen layer (not a BatchNorm)."""
    model = built(next(z for z in ZOO if z.name == "transformers/DETR"))
    assert not list(bnkit.bn_layers(model))
    assert any(type(m).__name__ == "DetrFrozenBatchNorm2d" for m in model.modules())
    with pytest.raises(bnkit.errors.SelectionError, match="no BatchNorm layer"):
        bnkit.freeze(model)
    assert not bnkit.check(model)
