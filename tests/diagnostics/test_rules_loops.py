"""The training-loop kinds of bnkit.check: each claim its text makes holds on a real run, each
fix makes it silent, and states a policy makes intended stay silent."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from tests.diagnostics.models import (
    Checkpointed,
    batch,
    clean,
    cnn,
    fingerprint,
    same,
    trained,
    weight_only_average,
)

import bnkit


def _kinds(*args: object, **kwargs: object) -> set[str]:
    return {f.kind for f in bnkit.check(*args, **kwargs)}  # type: ignore[arg-type]


# ---------------------------------------------------------------- half_precision_running_stats
@pytest.mark.parametrize(("dtype", "near", "far"), [(torch.float16, 1.004, 1.006)])
def test_half_precision_updates_are_rounded_away_as_the_finding_says(
    dtype: torch.dtype, near: float, far: float
) -> None:
    bn = nn.BatchNorm1d(1).to(dtype)
    bn.running_mean.fill_(1.0)
    (f,) = bnkit.check(bn)
    assert f.kind == "half_precision_running_stats"
    assert "within about 0.49% of it" in f.what and "above 65504 becomes inf" in f.why
    for target, moves in ((near, False), (far, True)):  # 0.4% away: lost; 0.6%: kept
        bn.running_mean.fill_(1.0)
        x = torch.tensor([[target - 0.5], [target + 0.5]], dtype=dtype)
        bn(x)
        assert (float(bn.running_mean) != 1.0) is moves


def test_half_precision_fix_and_intended_states_are_silent() -> None:
    model = clean().half()
    for _, layer in bnkit.bn_layers(model):
        layer.float()  # the fix
    assert _kinds(model) == set()
    assert _kinds(bnkit.freeze(clean().half())) == set()  # never updates: storage only
    assert _kinds(clean().double()) == set()


# ---------------------------------------------------------------- weights_without_stats
def test_weights_without_stats_is_told_apart_from_stale_statistics() -> None:
    found = bnkit.check(weight_only_average().eval())
    assert [f.kind for f in found] == ["weights_without_stats"]  # not stale_running_stats too
    assert "differ across channels" in found[0].what
    # a fresh model, even with zero-initialized gamma (zero_init_residual), is only stale
    fresh = cnn().eval()
    nn.init.zeros_(fresh[4].weight)
    assert _kinds(fresh) == {"stale_running_stats"}


def test_weights_without_stats_fixes() -> None:
    data = [batch(32, seed=s) for s in range(3)]
    assert _kinds(bnkit.recalibrate(weight_only_average().eval(), data, progress=False)) == set()
    averaged, source = weight_only_average().eval(), trained()
    with bnkit.average_stats(averaged, source, count=1):
        pass
    assert _kinds(averaged) == set()


# ---------------------------------------------------------------- double_update
@pytest.mark.parametrize("reentrant", [True, False])
def test_checkpointing_a_plain_layer_updates_twice_as_the_finding_says(reentrant: bool) -> None:
    model = Checkpointed(reentrant).train()
    x = batch(32).requires_grad_()
    (f,) = bnkit.check(model, x)
    assert f.kind == "double_update" and f.layers == ("body.1", "body.4")
    assert "move 0.19 of the way" in f.what
    layer = model.body[1]
    before = layer.running_mean.clone()
    with torch.no_grad():
        mean = model.body[0](x).mean((0, 2, 3))
    model(x).sum().backward()
    assert int(layer.num_batches_tracked) == 8 + 2  # calibrated with 8 batches, +2 for one step
    expected = before + (1 - (1 - 0.1) ** 2) * (mean - before)
    torch.testing.assert_close(layer.running_mean, expected)


def test_double_update_fix_runs_as_written_and_is_silent() -> None:
    model = Checkpointed(reentrant=False).train()
    (f,) = bnkit.check(model, batch(32))
    exec(f.fix.split(": ", 1)[1], {"bnkit": bnkit, "model": model})
    assert _kinds(model, batch(32)) == set()
    layer = model.body[1]
    model(batch(32).requires_grad_()).sum().backward()
    assert int(layer.num_batches_tracked) == 9  # one update per step now
    assert _kinds(bnkit.freeze(Checkpointed(reentrant=False)), batch(32)) == set()


# ---------------------------------------------------------------- updates_in_eval_loop
def test_eval_loop_in_train_mode_is_found_and_the_model_is_unchanged() -> None:
    model = clean().train()
    before = fingerprint(model)
    for context in (torch.no_grad(), torch.inference_mode()):
        with context:
            (f,) = bnkit.check(model, batch(32))
        assert f.kind == "updates_in_eval_loop" and f.layers == ("1", "4", "9")
        assert same(before, fingerprint(model))


def test_eval_loop_silent_when_meant() -> None:
    with torch.no_grad():
        assert _kinds(clean().eval(), batch(32)) == set()  # model.eval(): nothing moves
        assert _kinds(bnkit.freeze(clean()), batch(32)) == set()  # frozen: nothing moves
        # a policy that updates in eval too means to adapt on this data
        adapting = bnkit.apply(clean(), bnkit.Policy(update_in="always"))
        assert _kinds(adapting, batch(32)) == set()
        # a layer in train() inside a model in eval() is the mixed-phase finding, not this one
        mixed = clean().eval()
        mixed[9].train()
        assert _kinds(mixed, batch(32)) == {"unmanaged_mixed_phase"}
    assert _kinds(clean().train(), batch(32)) == set()  # gradients on: a training step


def test_weights_without_stats_on_an_averaged_copy_made_by_deepcopy() -> None:
    source = trained()
    averaged = copy.deepcopy(cnn())  # built before training, parameters averaged by hand
    with torch.no_grad():
        for a, p in zip(averaged.parameters(), source.parameters(), strict=True):
            a.lerp_(p, 0.5)
    assert _kinds(averaged.eval()) == {"weights_without_stats"}
