"""Source models: the on-disk cache and the BN-only check's training."""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest
import torch

from bnkit.layers.select import bn_layers
from bnkit.study.config import PretrainConfig
from bnkit.study.data import digits, split
from bnkit.study.models import build_model
from bnkit.study.pretrain import (
    Pretrained,
    bn_only_from_scratch,
    cache_key,
    fingerprint,
    pretrained,
)

CPU = torch.device("cpu")
SETTINGS = PretrainConfig(epochs=1, batch_size=64, lr=0.05)


def build() -> torch.nn.Module:
    return build_model("bn", width=4)


def _pretrain(cache: Path) -> Pretrained:
    s = split(digits(8), 0)
    desc = {"name": "test-bn", "width": 4}
    return pretrained(
        build, desc, s.source_train, s.source_val, settings=SETTINGS, seed=0, cache_dir=cache,
        device=CPU,
    )  # fmt: skip


def test_second_pretraining_is_a_cache_hit_with_identical_weights(tmp_path: Path) -> None:
    first = _pretrain(tmp_path)
    second = _pretrain(tmp_path)
    assert not first.cache_hit and second.cache_hit and first.path == second.path
    assert first.val_accuracy == second.val_accuracy
    a, b = first.model.state_dict(), second.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert not second.model.training
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]  # no temporary files left


def test_the_cache_key_covers_what_decides_the_weights() -> None:
    s = split(digits(8), 0)
    data = fingerprint(s.source_train)
    key = cache_key({"name": "m"}, SETTINGS, 0, data)
    assert key == cache_key({"name": "m"}, SETTINGS, 0, data)
    assert key != cache_key({"name": "m"}, SETTINGS, 1, data)
    assert key != cache_key({"name": "m2"}, SETTINGS, 0, data)
    assert key != cache_key({"name": "m"}, PretrainConfig(epochs=2), 0, data)
    assert key != cache_key(
        {"name": "m"}, SETTINGS, 0, fingerprint(split(digits(8), 1).source_train)
    )


def test_a_corrupt_cache_file_is_an_error_not_silently_used(tmp_path: Path) -> None:
    first = _pretrain(tmp_path)
    first.path.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):  # noqa: B017,PT011 - torch's own unpickling error
        _pretrain(tmp_path)


def test_bn_only_training_changes_only_gamma_and_beta(monkeypatch: pytest.MonkeyPatch) -> None:
    from bnkit.study import pretrain as module

    s = split(digits(8), 0)
    trained: dict[str, torch.Tensor] = {}
    original = module.predict

    def spy(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        trained.update({k: v.clone() for k, v in model.state_dict().items()})
        return original(model, x, batch_size)

    monkeypatch.setattr(module, "predict", spy)
    logits = bn_only_from_scratch(
        build, s.source_train, s.source_val, epochs=1, lr=1.0, batch_size=64, seed=0, device=CPU
    )
    assert logits.shape == (len(s.source_val), 10)
    torch.manual_seed(zlib.crc32(b"bn-only-0"))  # the random network it started from
    start = build()
    bn_names = {f"{n}.{p}" for n, _ in bn_layers(start) for p in ("weight", "bias")}
    for key, value in start.state_dict().items():
        if key in bn_names:
            assert not torch.equal(value, trained[key]), key
        elif "running" not in key and "num_batches" not in key:
            assert torch.equal(value, trained[key]), key
