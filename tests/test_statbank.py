"""StatBank: named statistic sets on a model, switched exactly; AdaBN in two calls."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn
from tests.nets import batches, small_cnn

import bnkit


def test_adabn_and_switching_between_domains() -> None:
    model = small_cnn().eval()
    bank = bnkit.stat_bank(model)
    assert bnkit.stat_bank(model) is bank
    source = bank.save("source")
    target_data = batches([32, 32], seed=7)
    target_data = [x * 3 - 2 for x in target_data]
    bnkit.recalibrate(model, target_data, progress=False)  # AdaBN, call 1 of 2
    target = bank.save("target")
    with torch.no_grad():
        out = model[:2](torch.cat(target_data))  # call 2: evaluate (BN1 now fits the target)
    assert out.mean((0, 2, 3)).sub(model[1].bias).abs().max() < 1e-4
    bank.use("source")
    assert bnkit.capture_stats(model) == source
    with bank.using("target"):
        assert bnkit.capture_stats(model) == target
    assert bnkit.capture_stats(model) == source
    assert sorted(bank) == ["source", "target"] and "target" in bank and len(bank) == 2
    assert repr(bank) == "StatBank('source', 'target')"


def test_using_restores_on_exception_and_unknown_names() -> None:
    model = small_cnn()
    bank = bnkit.stat_bank(model)
    bank["other"] = bnkit.capture_stats(small_cnn(seed=4))
    before = bnkit.capture_stats(model)
    with pytest.raises(RuntimeError, match="boom"), bank.using("other"):
        raise RuntimeError("boom")
    assert bnkit.capture_stats(model) == before
    with pytest.raises(
        bnkit.errors.StatsError, match="no statistic set named 'nope' on this model; sets: 'other'"
    ):
        bank.use("nope")
    assert bank.get("nope") is None
    with pytest.raises(KeyError):
        del bank["nope"]
    del bank["other"]
    assert not bank


def test_sets_are_checked_when_stored() -> None:
    bank = bnkit.stat_bank(small_cnn())
    with pytest.raises(
        bnkit.errors.StatsError, match=r"'1': running_mean has shape \(6,\) in the model"
    ):
        bank["x"] = bnkit.capture_stats(nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(3)))
    with pytest.raises(bnkit.errors.StatsError, match=r"holds bnkit\.StatSet values"):
        bank["x"] = {}  # type: ignore[assignment]


def test_the_bank_follows_the_model_and_saves_as_plain_tensors() -> None:
    model = small_cnn()
    bnkit.stat_bank(model).save("a")
    twin = copy.deepcopy(model)
    twin_bank = bnkit.stat_bank(twin)
    assert list(twin_bank) == ["a"] and twin_bank is not bnkit.stat_bank(model)
    twin[1].running_mean.fill_(3.0)
    twin_bank.use("a")  # acts on the copy, not on the original
    assert torch.equal(twin[1].running_mean, model[1].running_mean)
    buf = io.BytesIO()
    torch.save(bnkit.stat_bank(model).state_dict(), buf)
    buf.seek(0)
    fresh = small_cnn(seed=9)
    bnkit.stat_bank(fresh).load_state_dict(torch.load(buf, weights_only=True))
    bnkit.stat_bank(fresh).use("a")
    assert bnkit.capture_stats(fresh) == bnkit.capture_stats(model)
