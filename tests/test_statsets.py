"""StatSet, capture_stats, load_stats: plain tensors, exact round trips, precise errors."""

from __future__ import annotations

import io
import pickle

import pytest
import torch
import torch.nn as nn
from tests.nets import assert_same_state, small_cnn, state

import bnkit


def saved(obj: object) -> io.BytesIO:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return buf


def test_capture_and_load_round_trip_exactly() -> None:
    source, target = small_cnn(seed=0), small_cnn(seed=1)
    stats = bnkit.capture_stats(source)
    assert stats.layers == ["1", "4", "9"]
    assert set(stats) == {f"{n}.{k}" for n in stats.layers for k in
                          ("running_mean", "running_var", "num_batches_tracked")}  # fmt: skip
    buffers = list(target.buffers())
    bnkit.load_stats(target, stats)
    assert all(a is b for a, b in zip(buffers, target.buffers(), strict=True))
    for key, value in stats.items():
        assert torch.equal(target.state_dict()[key], value)
        assert torch.equal(source.state_dict()[key], value)
    # a copy: changing the model afterwards does not change the set
    source[1].running_mean.add_(1.0)
    assert not torch.equal(stats["1.running_mean"], source[1].running_mean)
    # the keys are state_dict keys: a set loads with load_state_dict too
    other = small_cnn(seed=2)
    other.load_state_dict(stats, strict=False)
    assert_same_state(state(other), state(target), skip=("0.", "3.", "8."))


def test_saved_sets_load_with_weights_only() -> None:
    stats = bnkit.capture_stats(small_cnn())
    assert bnkit.StatSet.load(saved(stats)) == stats
    with pytest.raises(pickle.UnpicklingError, match="StatSet"):  # no process-wide allow-list
        torch.load(saved(stats), weights_only=True)
    with torch.serialization.safe_globals([bnkit.StatSet]):
        assert torch.load(saved(stats), weights_only=True) == stats
    plain = torch.load(saved(stats.state_dict()), weights_only=True)
    assert type(plain) is dict
    assert bnkit.StatSet.from_state_dict(plain) == stats


def test_where_and_layers_without_statistics() -> None:
    model = nn.Sequential(nn.BatchNorm1d(2), nn.BatchNorm1d(2, track_running_stats=False))
    assert bnkit.capture_stats(model).layers == ["0"]
    with pytest.raises(bnkit.errors.StatsError, match="'1' has no running statistics"):
        bnkit.capture_stats(model, where="1")
    with pytest.raises(bnkit.errors.SelectionError):
        bnkit.capture_stats(model, where="nothing")


def test_layer_access_and_repr() -> None:
    stats = bnkit.capture_stats(small_cnn())
    entry = stats.layer("4")
    assert entry.running_mean.shape == (5,)
    assert entry.num_batches_tracked is not None
    assert repr(stats) == "StatSet('1' (6 channels), '4' (5 channels), '9' (4 channels))"
    with pytest.raises(bnkit.errors.StatsError, match="no layer 'x'"):
        stats.layer("x")
    with pytest.raises(KeyError):
        stats["x.running_mean"]


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"bn.weight": torch.ones(2)}, "does not end in one of"),
        ({"bn.running_mean": torch.ones(2)}, "layer 'bn' has no 'bn.running_var'"),
        ({"bn.running_mean": [1.0]}, "must be a tensor"),
    ],
)
def test_invalid_sets(tensors: dict[str, object], message: str) -> None:
    with pytest.raises(bnkit.errors.StatsError, match=message):
        bnkit.StatSet(tensors)  # type: ignore[arg-type]


def test_load_checks_names_and_shapes_before_copying() -> None:
    model = small_cnn()
    before = state(model)
    stats = bnkit.capture_stats(small_cnn(seed=3))
    wrong_shape = bnkit.StatSet({**stats, "9.running_mean": torch.zeros(7)})
    with pytest.raises(
        bnkit.errors.StatsError, match=r"'9': running_mean has shape \(4,\) in the model"
    ):
        bnkit.load_stats(model, wrong_shape)
    extra = bnkit.StatSet(
        {**stats, "x.running_mean": torch.zeros(1), "x.running_var": torch.ones(1)}
    )
    with pytest.raises(bnkit.errors.StatsError, match="layers the model lacks: 'x'"):
        bnkit.load_stats(model, extra)
    partial = bnkit.capture_stats(small_cnn(seed=3), where="4")
    with pytest.raises(
        bnkit.errors.StatsError, match="no statistics for '1', '9'; pass strict=False"
    ):
        bnkit.load_stats(model, partial)
    assert_same_state(before, state(model))
    bnkit.load_stats(model, partial, strict=False)
    assert torch.equal(model[4].running_var, partial["4.running_var"])
    assert torch.equal(model[1].running_var, before["1.running_var"])


def test_wrapped_models_use_the_inner_names(tmp_path: object) -> None:
    model = small_cnn()
    wrapped = nn.DataParallel(model)
    assert bnkit.capture_stats(wrapped) == bnkit.capture_stats(model)
    bnkit.load_stats(wrapped, bnkit.capture_stats(small_cnn(seed=5)))
    assert bnkit.capture_stats(model) == bnkit.capture_stats(small_cnn(seed=5))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (lambda t: t.fill_(float("nan")), "has NaN/Inf values"),
        (lambda t: t.fill_(-1.0), "negative values"),
        (lambda t: torch.empty_like(t, device="meta"), "meta tensor"),
        (lambda t: t.to(torch.int64), "must be floating point"),
    ],
    ids=["nan", "negative", "meta", "int"],
)
def test_load_refuses_bad_values_before_copying_anything(bad: object, message: str) -> None:
    model = small_cnn()
    stats = dict(bnkit.capture_stats(small_cnn(seed=1)))
    last = [k for k in stats if k.endswith("running_var")][-1]  # the last layer: the others first
    stats[last] = bad(stats[last].clone())  # type: ignore[operator]
    before = state(model)
    with pytest.raises(bnkit.errors.StatsError, match=message):
        bnkit.load_stats(model, bnkit.StatSet(stats))
    assert_same_state(state(model), before)


def test_a_copy_that_fails_part_way_puts_every_layer_back() -> None:
    model = small_cnn()
    source = small_cnn(seed=1)
    for layer in (source[1], source[4]):
        layer.num_batches_tracked.fill_(7)  # counters get copied too, and put back
    stats = bnkit.capture_stats(source)
    last = model[9]
    # a buffer that cannot be written: every element is one memory location
    last.running_var = last.running_var[:1].clone().expand_as(last.running_var)
    before = state(model)
    with pytest.raises(RuntimeError, match="single memory location"):
        bnkit.load_stats(model, stats)
    assert_same_state(state(model), before)
