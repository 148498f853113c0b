"""bnkit.check never changes the model: phases, values, tensors, flags, grads, hooks, RNG —
also when the example forward raises."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given
from hypothesis import strategies as st
from tests.diagnostics.models import assert_same, batch, clean, cnn, fingerprint

import bnkit
from bnkit.diagnostics._example import run_probe


def _with_grads(model: nn.Module) -> nn.Module:
    model(batch(8)).sum().backward()
    return model


@given(
    phases=st.lists(st.booleans(), min_size=4, max_size=4),
    policies=st.lists(
        st.sampled_from([None, "pytorch", "frozen", "frozen_stats", "adapt", "batch_stats"]),
        min_size=3,
        max_size=3,
    ),
    n=st.sampled_from([1, 2, 16]),
    momentum=st.sampled_from([0.1, 0.0, None]),
)
def test_check_changes_nothing(
    phases: list[bool], policies: list[str | None], n: int, momentum: float | None
) -> None:
    model = _with_grads(clean())
    model[4].momentum = momentum
    model.train(phases[0])
    for i, layer, policy, training in zip(
        range(3), (model[1], model[4], model[9]), policies, phases[1:], strict=True
    ):
        if policy is not None:
            bnkit.apply(model, policy, where=str([1, 4, 9][i]))
        layer.train(training)
    before = fingerprint(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=1e-3)
    bnkit.check(model, batch(n), opt)
    bnkit.report(model)
    assert_same(before, fingerprint(model))


def test_raising_forward_restores_everything() -> None:
    class Breaks(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = clean()
            self.head = nn.Linear(7, 2)  # wrong width: fails after every BN has run

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.body(x))

    model = Breaks().train()
    before = fingerprint(model)
    with pytest.raises(
        bnkit.errors.DiagnosticError, match="example forward raised RuntimeError"
    ) as info:
        bnkit.check(model, batch(16))
    assert isinstance(info.value.__cause__, RuntimeError)
    assert_same(before, fingerprint(model))
    assert model.body[1].num_batches_tracked == 8


def test_batch_of_one_in_train_is_a_finding_and_restores() -> None:
    model = clean().train()
    before = fingerprint(model)
    probe = run_probe(model, batch(1))
    assert isinstance(probe.error, ValueError) and probe.failed_in == "9"
    assert [c.n for c in probe.calls["1"]] == [64]
    assert_same(before, fingerprint(model))


def test_graph_built_before_check_still_backpropagates() -> None:
    for training in (True, False):
        model = clean().train(training)
        loss = model(batch(8)).square().sum()
        bnkit.check(model, batch(16))
        loss.backward()  # no "modified by an inplace operation"
        assert model[0].weight.grad is not None


def test_random_state_is_untouched() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.BatchNorm1d(4)).train()
    x = torch.randn(16, 4)
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    bnkit.check(model, x)
    assert torch.equal(torch.rand(3), expected)


def test_managed_probe_survives_check() -> None:
    class Activated(nn.BatchNorm1d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(super().forward(x))

    model = nn.Sequential(nn.Linear(3, 4), Activated(4))
    bnkit.apply(model, "frozen_stats")
    before = fingerprint(model)
    bnkit.check(model, torch.randn(16, 3))
    assert_same(before, fingerprint(model))  # the one-shot subclass check is still pending


def test_lazy_layers_are_refused() -> None:
    model = nn.Sequential(nn.LazyLinear(4), nn.BatchNorm1d(4))
    with pytest.raises(
        bnkit.errors.DiagnosticError, match="layer '0' is an unmaterialized lazy layer"
    ):
        bnkit.check(model, torch.randn(8, 3))
    # without an input nothing needs a forward
    assert [f.kind for f in bnkit.check(model)] == ["conv_bias_before_bn"]


def test_probe_records_inputs_and_sources() -> None:
    model = cnn(bias=True).train()
    x = batch(16)
    probe = run_probe(model, x)
    assert probe.error is None and set(probe.calls) == {"1", "4", "9"}
    first = probe.calls["1"][0]
    assert first.after == "0" and first.batch and first.updates and first.n == 16 * 64
    conv = model[0](x).detach().double()
    assert torch.allclose(first.mean, conv.mean(dim=(0, 2, 3)))
    assert torch.allclose(first.var, conv.transpose(0, 1).reshape(8, -1).var(dim=1))
    assert torch.equal(first.running_mean, torch.zeros(8, dtype=torch.float64))
