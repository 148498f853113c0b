"""torch.func: functional_call and vmap over stacked members of managed models equal a loop
over the members (the oracle); the functional form returns updated statistics."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from tests.helpers import randomize
from torch.func import functional_call, grad, stack_module_state, vmap

import bnkit

READ_ONLY = ["frozen", "frozen_stats", "batch_stats", "prior"]
UPDATING = ["pytorch", "adapt", "renorm", "ghost"]


def _members(policy: str, k: int = 3) -> list[nn.Module]:
    out = []
    for seed in range(k):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
        randomize(net[1], seed)
        out.append(bnkit.apply(net, bnkit.preset(policy)).train())
    return out


def _x() -> torch.Tensor:
    return torch.randn(8, 4, generator=torch.Generator().manual_seed(9))


@pytest.mark.parametrize("policy", READ_ONLY)
def test_vmap_over_an_ensemble_equals_a_loop(policy: str) -> None:
    members = _members(policy)
    params, buffers = stack_module_state(members)
    base = copy.deepcopy(members[0]).to("meta")

    def one(
        p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor
    ) -> torch.Tensor:
        out: torch.Tensor = functional_call(base, (p, b), (x,))
        return out

    ensemble = vmap(one, in_dims=(0, 0, None))(params, buffers, _x())
    expected = torch.stack([m(_x()) for m in members])
    torch.testing.assert_close(ensemble, expected)


@pytest.mark.parametrize("policy", READ_ONLY)
def test_per_sample_gradients_equal_a_loop(policy: str) -> None:
    torch.manual_seed(0)  # sequences: one sample has 5 values per channel for its statistics
    model = nn.Sequential(nn.Conv1d(4, 6, 1), nn.BatchNorm1d(6), nn.ReLU(), nn.Conv1d(6, 2, 1))
    bnkit.apply(randomize(model[1]), bnkit.preset(policy))
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    xs = torch.randn(8, 4, 5, generator=torch.Generator().manual_seed(9))

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = functional_call(model, (p, buffers), (x[None],))
        return out.square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, xs)
    for i, x in enumerate(xs):
        model.zero_grad()
        model(x[None]).square().sum().backward()
        for name, p in model.named_parameters():
            if p.grad is not None:
                torch.testing.assert_close(per_sample[name][i], p.grad, msg=name)


@pytest.mark.parametrize("policy", UPDATING)
def test_the_functional_form_returns_updated_statistics_and_writes_nothing(policy: str) -> None:
    model = _members(policy, 1)[0]
    state = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    before = {k: v.clone() for k, v in model.named_buffers()}
    out, new = bnkit.training.functional_call(model, state, (_x(),))
    for name, value in model.named_buffers():
        assert torch.equal(value, before[name])  # the given buffers are left alone
    twin = copy.deepcopy(model)
    expected = twin(_x())
    torch.testing.assert_close(out, expected)
    for name, value in twin.named_buffers():
        torch.testing.assert_close(new[name], value, msg=name)


@pytest.mark.parametrize("policy", UPDATING)
def test_updating_policies_under_vmap_give_each_member_its_statistics(policy: str) -> None:
    members = _members(policy)
    params, buffers = stack_module_state(members)
    base = copy.deepcopy(members[0])

    def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor) -> object:
        return bnkit.training.functional_call(base, {**p, **b}, (x,))

    out, new = vmap(one, in_dims=(0, 0, None))(params, buffers, _x())
    for i, member in enumerate(members):
        torch.testing.assert_close(out[i], member(_x()))
        for name, value in member.named_buffers():
            torch.testing.assert_close(new[name][i], value, msg=name)
