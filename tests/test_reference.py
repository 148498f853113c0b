"""The float64 reference against closed-form numbers and against nn.BatchNorm itself."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from tests.helpers import randomize

import bnkit


def test_closed_form_batch_statistics_and_update() -> None:
    # channel 0 holds 1, 2, 3, 6: mean 3, biased var 3.5, unbiased var 14/3
    x = torch.tensor([[1.0], [2.0], [3.0], [6.0]])
    step = bnkit.reference.reference_forward(
        bnkit.preset("pytorch"),
        x,
        training=True,
        running_mean=torch.zeros(1),
        running_var=torch.ones(1),
        num_batches_tracked=0,
        eps=0.0 + 1e-5,
    )
    assert step.n == 4
    assert step.batch_mean.item() == pytest.approx(3.0)
    assert step.batch_var.item() == pytest.approx(3.5)
    assert step.output[:, 0].tolist() == pytest.approx(
        [(v - 3.0) / (3.5 + 1e-5) ** 0.5 for v in (1, 2, 3, 6)]
    )
    assert step.new_running_mean.item() == pytest.approx(0.3)  # type: ignore[union-attr]
    assert step.new_running_var.item() == pytest.approx(0.9 + 0.1 * 14 / 3)  # type: ignore[union-attr]
    assert step.new_num_batches_tracked == 1


def test_cumulative_factor_is_one_over_k() -> None:
    x = torch.tensor([[1.0], [3.0]])
    step = bnkit.reference.reference_forward(
        bnkit.Policy(update="cumulative"),
        x,
        training=True,
        running_mean=torch.tensor([10.0]),
        running_var=torch.ones(1),
        num_batches_tracked=3,
    )
    assert step.factor == pytest.approx(0.25)
    assert step.new_running_mean.item() == pytest.approx(0.75 * 10 + 0.25 * 2)  # type: ignore[union-attr]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_reference_agrees_with_nn_batchnorm(training: bool, momentum: float | None) -> None:
    bn = randomize(nn.BatchNorm2d(3, momentum=momentum, dtype=torch.float64)).train(training)
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    step = bnkit.reference.reference_step(bn, x)
    native = copy.deepcopy(bn)
    y = native(x)
    torch.testing.assert_close(y, step.output, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(native.running_mean, step.new_running_mean)
    torch.testing.assert_close(native.running_var, step.new_running_var)
    assert int(native.num_batches_tracked) == step.new_num_batches_tracked


def test_reference_does_not_touch_the_layer() -> None:
    bn = randomize(nn.BatchNorm1d(3))
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    bnkit.reference.reference_step(bn, torch.randn(4, 3))
    assert all(torch.equal(before[k], v) for k, v in bn.state_dict().items())


def test_reference_skips_a_nonfinite_update() -> None:
    x = torch.tensor([[1.0], [float("nan")]])
    step = bnkit.reference.reference_forward(
        bnkit.preset("pytorch"),
        x,
        training=True,
        running_mean=torch.zeros(1),
        running_var=torch.ones(1),
        num_batches_tracked=0,
    )
    assert step.skipped and not step.updated
    assert step.new_running_mean.tolist() == [0.0]  # type: ignore[union-attr]
    assert step.new_num_batches_tracked == 0
