"""The BN-only check: only gamma/beta of a random network move."""

from __future__ import annotations

import zlib

import pytest
import torch

from bnkit import bn_layers
from bnkit.study.data.feed import Feed
from bnkit.study.data.scenarios import split_of
from bnkit.study.models.resnet import build_model
from bnkit.study.protocols import bn_only as module


def test_bn_only_training_changes_only_gamma_and_beta(monkeypatch: pytest.MonkeyPatch) -> None:
    s = split_of("digits", 8, 0)
    trained: dict[str, torch.Tensor] = {}
    original = module.predict

    def spy(model: torch.nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        trained.update({k: v.clone() for k, v in model.state_dict().items()})
        return original(model, x, batch_size)

    monkeypatch.setattr(module, "predict", spy)

    def build() -> torch.nn.Module:
        return build_model("bn", width=4)

    logits = module.bn_only_from_scratch(
        build, s.source_train, s.source_val, steps=5, lr=1.0, batch_size=64, seed=0,
        feed=Feed(torch.device("cpu")),
    )  # fmt: skip
    assert logits.shape == (len(s.source_val), 10)
    torch.manual_seed(zlib.crc32(b"bn-only-0"))  # the random network it started from
    start = build()
    bn_names = {f"{n}.{p}" for n, _ in bn_layers(start) for p in ("weight", "bias")}
    for key, value in start.state_dict().items():
        if key in bn_names:
            assert not torch.equal(value, trained[key]), key
        elif "running" not in key and "num_batches" not in key:
            assert torch.equal(value, trained[key]), key
