"""Source models: trained until the held-out loss stops improving, cached under their identity."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from pathlib import Path

import pytest
import torch

from bnkit.study.config.settings import PretrainConfig
from bnkit.study.data.domain import fingerprint
from bnkit.study.data.scenarios import split_of
from bnkit.study.models.resnet import build_model
from bnkit.study.models.source import Pretrained, cache_key, pretrained, weights_digest

CPU = torch.device("cpu")
SETTINGS = PretrainConfig(max_steps=60, eval_every=20, patience=2, warmup_steps=5)
IDENTITY = {"name": "test-bn", "device": "cpu"}


def build() -> torch.nn.Module:
    return build_model("bn", width=4)


def _pretrain(cache: Path, settings: PretrainConfig = SETTINGS, seed: int = 0) -> Pretrained:
    s = split_of("digits", 8, seed)
    return pretrained(
        build, IDENTITY, s.source_train, s.source_val, settings=settings, seed=seed,
        cache_dir=cache, device=CPU,
    )  # fmt: skip


def test_second_pretraining_is_a_cache_hit_with_identical_weights(tmp_path: Path) -> None:
    first = _pretrain(tmp_path)
    second = _pretrain(tmp_path)
    assert not first.cache_hit and second.cache_hit and first.path == second.path
    assert first.val_accuracy == second.val_accuracy and first.steps == second.steps
    assert weights_digest(first.model) == weights_digest(second.model)
    assert not second.model.training
    names = sorted(p.name for p in tmp_path.iterdir())  # no temporary files left
    assert names == [first.path.name, first.path.name + ".lock"]


def test_processes_needing_one_model_wait_for_the_one_training_it(tmp_path: Path) -> None:
    """Regression: workers that needed the same source model raced to train it."""
    spawn = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=spawn) as pool:
        got = list(pool.map(_hit_and_digest, [tmp_path] * 2))
    assert sorted(hit for hit, _ in got) == [False, True]
    assert len({digest for _, digest in got}) == 1


def _hit_and_digest(cache: Path) -> tuple[bool, str]:
    torch.set_num_threads(1)
    got = _pretrain(cache)
    return got.cache_hit, weights_digest(got.model)


def test_training_stops_when_the_held_out_loss_stops_improving(tmp_path: Path) -> None:
    patient = PretrainConfig(max_steps=2000, eval_every=10, patience=1, lr=5.0, warmup_steps=1)
    got = _pretrain(tmp_path, patient)  # a learning rate that cannot keep improving
    assert got.converged and got.steps < 2000


def test_the_cache_key_covers_what_decides_the_weights() -> None:
    s = split_of("digits", 8, 0)
    data = fingerprint(s.source_train)
    key = cache_key(IDENTITY, SETTINGS, 0, data)
    assert key == cache_key(dict(IDENTITY), SETTINGS, 0, data)
    assert key != cache_key(IDENTITY, SETTINGS, 1, data)
    assert key != cache_key({**IDENTITY, "name": "other"}, SETTINGS, 0, data)
    assert key != cache_key({**IDENTITY, "device": "cuda"}, SETTINGS, 0, data)
    assert key != cache_key({**IDENTITY, "init": "0123"}, SETTINGS, 0, data)
    assert key != cache_key(IDENTITY, PretrainConfig(max_steps=61), 0, data)
    assert key != cache_key(
        IDENTITY, SETTINGS, 0, fingerprint(split_of("digits", 8, 1).source_train)
    )


def test_another_initialization_is_another_cache_file(tmp_path: Path) -> None:
    first = _pretrain(tmp_path)
    s = split_of("digits", 8, 0)
    other = pretrained(
        lambda: build_model("bn", width=5), IDENTITY, s.source_train, s.source_val,
        settings=SETTINGS, seed=0, cache_dir=tmp_path, device=CPU,
    )  # fmt: skip
    assert not other.cache_hit and other.path != first.path  # same name, other weights


def test_a_corrupt_cache_file_is_an_error_not_silently_used(tmp_path: Path) -> None:
    first = _pretrain(tmp_path)
    first.path.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception):  # noqa: B017,PT011 - torch's own unpickling error
        _pretrain(tmp_path)
