"""TENT: entropy minimization on gamma/beta improves a shifted domain; reset is exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import bnkit


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 0.0, 1.0, -1.0], [-2.0, 1.0, 0.0, 1.0], [0.0, -2.0, -1.0, 0.0]])
    labels = torch.randint(0, 3, (n,), generator=g)
    x = centers[labels] + 0.7 * torch.randn(n, 4, generator=g)
    return x, labels


def source_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.BatchNorm1d(16),
        nn.ReLU(), nn.Linear(16, 3),
    )  # fmt: skip
    x, y = blobs(1024, seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for i in range(300):
        idx = torch.arange(i * 32, i * 32 + 32) % 1024
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def shifted(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor([2.5, 0.4, 1.8, 3.0]) + torch.tensor([3.0, -2.0, 1.5, -2.5])


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean())


def test_tent_improves_accuracy_on_a_shifted_domain() -> None:
    model = source_model()
    x, y = blobs(1024, seed=2)
    with torch.no_grad():
        assert accuracy(model(x), y) > 0.95  # the source model works in its own domain
        unadapted = accuracy(model(shifted(x)), y)
    adapt = bnkit.tent(model, lr=5e-3)
    correct = 0
    for i in range(0, 1024, 64):
        logits = adapt(shifted(x[i : i + 64]))
        correct += int((logits.argmax(1) == y[i : i + 64]).sum())
    adapted = correct / 1024
    assert adapted > unadapted + 0.2, (unadapted, adapted)
    adapt.release()


def test_only_gamma_beta_change_and_reset_is_exact() -> None:
    model = source_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapt = bnkit.Tent(model, lr=1e-2)
    x, _ = blobs(64, seed=3)
    for _ in range(3):
        adapt(shifted(x))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"1.weight", "1.bias", "4.weight", "4.bias"}
    assert adapt.optimizer.state  # Adam moments exist
    adapt.reset()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not adapt.optimizer.state
    assert model.training is False  # the model's own mode was never touched


def test_episodic_adapts_each_batch_from_the_start_and_online_keeps_going() -> None:
    x, _ = blobs(64, seed=4)
    episodic = bnkit.tent(source_model(), lr=1e-2, episodic=True)
    first, second = episodic(shifted(x)), episodic(shifted(x))
    assert torch.equal(first, second)
    online = bnkit.tent(source_model(), lr=1e-2)
    first, second = online(shifted(x)), online(shifted(x))
    assert not torch.equal(first, second)


def test_release_gives_back_policies_and_requires_grad() -> None:
    model = source_model()
    bnkit.freeze(model, where="4")
    model[0].weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    with bnkit.tent(model):
        assert bnkit.policy_of(model[4]) == bnkit.preset("batch_stats")
        assert not model[3].weight.requires_grad
    assert [p.requires_grad for p in model.parameters()] == flags
    assert bnkit.policy_of(model[4]) == bnkit.preset("frozen")
    assert type(model[1]) is nn.BatchNorm1d


def test_tent_needs_affine_parameters() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8, affine=False), nn.Linear(8, 2))
    with pytest.raises(bnkit.LayerError, match="have none"):
        bnkit.tent(model)
    with pytest.raises(bnkit.PolicyError, match="steps must be at least 1"):
        bnkit.tent(source_model(), steps=0)


def _snapshot(model: nn.Module) -> tuple[list[type], list[bool], list[torch.Tensor]]:
    return (
        [type(m) for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [t.clone() for t in model.state_dict().values()],
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": -1.0}, "lr must be a positive finite number"),
        ({"lr": float("nan")}, "lr must be a positive finite number"),
        ({"steps": 1.5}, "steps must be at least 1"),
        ({"optimizer": "adam"}, "optimizer must be a torch.optim.Optimizer"),
    ],
)
def test_bad_settings_change_nothing(kwargs: dict[str, object], message: str) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).eval()
    before = _snapshot(model)
    with pytest.raises(bnkit.PolicyError, match=message):
        bnkit.tent(model, **kwargs)
    after = _snapshot(model)
    assert before[:2] == after[:2] and all(map(torch.equal, before[2], after[2]))


def test_an_optimizer_over_other_parameters_is_refused_before_anything_changes() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)).eval()
    before = _snapshot(model)
    with pytest.raises(bnkit.PolicyError, match="holds none of the adapted parameters"):
        bnkit.tent(model, optimizer=torch.optim.SGD(model[0].parameters(), lr=0.1))
    assert _snapshot(model)[:2] == before[:2]


def test_a_model_with_a_frozen_export_inside_adapts_its_other_layers() -> None:
    model = nn.Sequential(
        nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 3)
    ).eval()
    bnkit.to_frozen(model, where="1")
    with bnkit.tent(model, lr=1e-2) as adapt:
        adapt(torch.randn(16, 4))
        assert bnkit.policy_of(model[3]) == bnkit.preset("batch_stats")
        assert [p.requires_grad for p in model.parameters()] == [False] * 4 + [True] * 2 + [
            False
        ] * 2
    assert bnkit.managed_layers(model) == []
    assert all(p.requires_grad for p in model.parameters())
