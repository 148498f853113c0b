"""The Policy value object and the presets registry."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

import bnkit
from bnkit import Policy, PolicyError
from bnkit.policy import Affine, Normalize, Phase, Update


def test_defaults_are_pytorch() -> None:
    p = Policy()
    assert (p.normalize, p.update, p.momentum, p.update_in, p.affine) == (
        Normalize.PHASE,
        Update.EMA,
        None,  # the layer's own momentum
        Phase.TRAIN,
        Affine.TRAINABLE,
    )
    assert p == bnkit.preset("pytorch")


def test_strings_are_coerced_and_value_equality_holds() -> None:
    a = Policy(normalize="running", update="never", affine="frozen")
    assert a.normalize is Normalize.RUNNING
    assert a == bnkit.preset("frozen")
    assert hash(a) == hash(bnkit.preset("frozen"))
    assert pickle.loads(pickle.dumps(a)) == a


def test_immutable() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Policy().momentum = 0.5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"normalize": "eval"}, r"'normalize' must be one of 'phase', 'batch', 'running'"),
        ({"momentum": 0.0}, r"momentum must be in \(0, 1\].*say so with update='never'"),
        ({"momentum": 1.5}, r"momentum must be in \(0, 1\] for update='ema' \(got 1.5\)"),
        ({"momentum": "fast"}, r"momentum must be a float"),
        ({"update": "never", "momentum": 0.01}, r"momentum only applies to update='ema'"),
        ({"update": "never", "update_in": "always"}, r"update_in only applies when"),
        ({"affine": "off"}, r"'affine' must be one of 'trainable', 'frozen'"),
    ],
)
def test_invalid_settings_raise_clear_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        Policy(**kwargs)  # type: ignore[arg-type]


def test_behaviour_per_phase() -> None:
    pytorch = bnkit.preset("pytorch")
    assert pytorch.uses_batch_stats(True) and not pytorch.uses_batch_stats(False)
    assert pytorch.updates(True) and not pytorch.updates(False)
    adapt = bnkit.preset("adapt", update_in="always")
    assert not adapt.uses_batch_stats(True) and adapt.updates(False)
    assert bnkit.preset("batch_stats").uses_batch_stats(False)
    assert not bnkit.preset("batch_stats").needs_running_stats
    assert bnkit.preset("frozen").needs_running_stats


def test_repr_names_the_preset_and_its_changes() -> None:
    assert repr(bnkit.preset("frozen")) == "bnkit.preset('frozen')"
    assert repr(bnkit.preset("adapt", momentum=0.001)) == "bnkit.preset('adapt', momentum=0.001)"
    odd = Policy(normalize="batch", update="ema", update_in="always", affine="frozen")
    assert repr(odd) == (
        "bnkit.Policy(normalize='batch', update='ema', update_in='always', affine='frozen')"
    )
    assert eval(repr(odd), {"bnkit": bnkit}) == odd
    assert eval(repr(bnkit.preset("adapt", momentum=0.2)), {"bnkit": bnkit}).momentum == 0.2


def test_str_says_what_happens_in_each_phase() -> None:
    assert str(bnkit.preset("frozen")) == (
        "normalize with running stats, no update, gamma/beta frozen (train and eval)"
    )
    assert str(bnkit.preset("pytorch")).startswith(
        "train: normalize with batch stats, EMA update (the layer's momentum)"
    )


def test_presets_registry() -> None:
    assert bnkit.presets()[:6] == [
        "pytorch",
        "frozen",
        "frozen_stats",
        "frozen_affine",
        "batch_stats",
        "adapt",
    ]
    assert bnkit.preset("adapt").momentum == 0.01
    assert bnkit.policy.preset_info("frozen").same_as.startswith("torchvision/detectron2")
    with pytest.raises(PolicyError, match="unknown preset 'freeze'; known presets: 'pytorch'"):
        bnkit.preset("freeze")
    with pytest.raises(PolicyError, match="preset 'adapt': unknown policy setting 'momentun'"):
        bnkit.preset("adapt", momentun=0.1)
    with pytest.raises(PolicyError, match="preset 'frozen': momentum only applies"):
        bnkit.preset("frozen", momentum=0.01)


def test_register_preset() -> None:
    with pytest.raises(PolicyError, match="already registered"):
        bnkit.register_preset("frozen", Policy())
    with pytest.raises(PolicyError, match="must be an identifier"):
        bnkit.register_preset("my preset", Policy())
