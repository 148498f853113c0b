"""Gradient accumulation: one update per optimizer step, equal to one forward on the pooled
micro-batches; nothing for a step GradScaler skips."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from tests.helpers import randomize

import bnkit
from bnkit.reference import reference_forward

UPDATING = {
    "pytorch": bnkit.preset("pytorch"),
    "adapt": bnkit.preset("adapt"),
    "renorm": bnkit.preset("renorm", r_max=1.5, d_max=0.5),
    "prior": bnkit.preset("prior", prior_strength=8.0, update="ema"),
    "cumulative": bnkit.Policy(update="cumulative"),
    "frozen_affine": bnkit.preset("frozen_affine"),
    "always": bnkit.preset("adapt", update_in="always"),
}


def _net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3),
    )  # fmt: skip
    for m in (net[1], net[4]):
        randomize(m)
    return net


def _micro(k: int = 3, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 6, 6, generator=g) * 2 + 1 for n in (4, 7, 5)[:k]]


def _recording(net: nn.Module) -> dict[int, list[torch.Tensor]]:
    """Record what each BatchNorm layer sees in the forwards to come."""
    seen: dict[int, list[torch.Tensor]] = {1: [], 4: []}
    for index, inputs in seen.items():
        net[index].register_forward_pre_hook(lambda m, args, s=inputs: s.append(args[0].detach()))
    return seen


@pytest.mark.parametrize("name", list(UPDATING))
def test_k_micro_batches_update_as_one_forward_on_everything_they_saw(name: str) -> None:
    policy = UPDATING[name]
    net = bnkit.apply(_net(), policy).train()
    before = copy.deepcopy(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    batches = _micro()
    seen = _recording(net)
    with bnkit.accumulate(net, opt) as acc:
        for x in batches:
            net(x).sum().backward()
        assert acc.forwards == 3
        for a, b in zip(net.buffers(), before.buffers(), strict=True):
            assert torch.equal(a, b)  # nothing moved before the step
        opt.step()
        opt.zero_grad()
    assert acc.steps == 1
    for index in (1, 4):
        layer, old = net[index], before[index]
        ref = reference_forward(  # one forward on everything the layer saw
            policy, torch.cat(seen[index]), training=True, weight=old.weight, bias=old.bias,
            running_mean=old.running_mean, running_var=old.running_var,
            num_batches_tracked=int(old.num_batches_tracked), momentum=old.momentum,
        )  # fmt: skip
        assert ref.new_running_mean is not None and ref.new_running_var is not None
        torch.testing.assert_close(layer.running_mean.double(), ref.new_running_mean)
        torch.testing.assert_close(layer.running_var.double(), ref.new_running_var)
        assert int(layer.num_batches_tracked) == int(old.num_batches_tracked) + 1
    assert bnkit.policy_of(net[1]) == policy  # the policy is as it was


def test_the_first_layer_equals_one_forward_on_the_concatenated_batch() -> None:
    net = _net().train()
    single = copy.deepcopy(net)
    batches = _micro()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with bnkit.accumulate(net, opt):
        for x in batches:
            net(x).sum().backward()
        opt.step()
    single[:2](torch.cat(batches))
    torch.testing.assert_close(net[1].running_mean, single[1].running_mean)
    torch.testing.assert_close(net[1].running_var, single[1].running_var)
    assert type(net[1]) is nn.BatchNorm2d  # plain layers are plain again after the block


def test_ghost_batches_keep_their_rule_over_the_micro_batches() -> None:
    policy = bnkit.preset("ghost", ghost_size=3)
    net = bnkit.apply(_net(), policy).train()
    before = copy.deepcopy(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    batches = _micro()
    with bnkit.accumulate(net, opt):
        for x in batches:
            net(x).sum().backward()
        opt.step()
    # the oracle: the held-back rule is the size-weighted mean over every group of every batch
    groups = [g for x in batches for g in torch.chunk(x, -(-len(x) // 3))]
    old = before[1]
    means, variances, counts = [], [], []
    for g in groups:
        h = before[0](g).detach().double()
        vals = h.transpose(0, 1).reshape(4, -1)
        means.append(vals.mean(1))
        variances.append(vals.var(1))
        counts.append(vals.shape[1])
    w = torch.tensor(counts, dtype=torch.float64)[:, None]
    mean = (torch.stack(means) * w).sum(0) / w.sum()
    var = (torch.stack(variances) * w).sum(0) / w.sum()
    torch.testing.assert_close(
        net[1].running_mean.double(), 0.9 * old.running_mean.double() + 0.1 * mean
    )
    torch.testing.assert_close(
        net[1].running_var.double(), 0.9 * old.running_var.double() + 0.1 * var
    )


def test_a_step_skipped_by_grad_scaler_commits_nothing() -> None:
    net = _net().train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu")
    batches = _micro()
    counts = [int(net[i].num_batches_tracked) for i in (1, 4)]
    with bnkit.accumulate(net, opt) as acc:
        before = [b.clone() for b in net.buffers()]
        for x in batches:  # overflowing gradients: the scaler skips the step
            scaler.scale(net(x).sum() * float("inf")).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        assert acc.steps == 0 and acc.dropped == 1
        for a, b in zip(before, net.buffers(), strict=True):
            assert torch.equal(a, b)
        for x in batches:  # the next, finite, step commits only its own micro-batches
            scaler.scale(net(x).sum()).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
    assert acc.steps == 1
    assert [int(net[i].num_batches_tracked) for i in (1, 4)] == [c + 1 for c in counts]


def test_held_back_updates_without_a_step_are_dropped_at_the_end() -> None:
    net = _net().train()
    before = copy.deepcopy(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with bnkit.accumulate(net, opt):
        net(_micro()[0])
    for a, b in zip(net.buffers(), before.buffers(), strict=True):
        assert torch.equal(a, b)
    assert opt.zero_grad.__func__ is torch.optim.Optimizer.zero_grad  # type: ignore[attr-defined]


def test_compiled_model_accumulates_like_eager() -> None:
    eager, compiled_net = _net().train(), _net().train()
    compiled = torch.compile(compiled_net, backend="aot_eager")
    for net, runner in ((eager, eager), (compiled_net, compiled)):
        opt = torch.optim.SGD(net.parameters(), lr=0.0)
        with bnkit.accumulate(net, opt):
            for x in _micro():
                runner(x).sum().backward()
            opt.step()
    for a, b in zip(eager.buffers(), compiled_net.buffers(), strict=True):
        torch.testing.assert_close(a, b)


def test_accumulate_checks_its_arguments() -> None:
    with (
        pytest.raises(bnkit.LayerError, match=r"needs the torch\.optim\.Optimizer"),
        bnkit.accumulate(_net(), "sgd"),  # type: ignore[arg-type]
    ):
        pass
