"""Failures leave a layer as it was; second derivatives are exact or nothing; threads cannot
leave a model on a policy that already ended."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn as nn
from tests.helpers import randomize

import bnkit
from bnkit.reference import reference_forward

PRESETS = ["pytorch", "adapt", "renorm", "ghost", "frozen_affine", "batch_stats"]


def _counter_case(preset: str) -> nn.Module:
    return bnkit.apply(randomize(nn.BatchNorm2d(3)), bnkit.preset(preset)).train()


@pytest.mark.parametrize("preset", [*PRESETS, "prior"])
@pytest.mark.parametrize(
    "bad",
    [
        lambda: torch.randn(4, 3, 2, 2, dtype=torch.float64),  # float64 into a float32 layer
        lambda: torch.randint(0, 5, (4, 3, 2, 2)),  # integers
        lambda: torch.empty(4, 3, 2, 2, device="meta"),  # no data
    ],
    ids=["float64", "int", "meta"],
)
def test_a_forward_that_fails_in_the_kernel_leaves_every_buffer(preset: str, bad: object) -> None:
    layer = _counter_case(preset)
    before = [b.clone() for b in layer.buffers()]
    with pytest.raises((RuntimeError, NotImplementedError, ValueError)):
        layer(bad())  # type: ignore[operator]
    for old, new in zip(before, layer.buffers(), strict=True):
        assert torch.equal(old, new)  # num_batches_tracked included


@pytest.mark.parametrize(
    "policy",
    [
        bnkit.preset("prior", prior_strength=4.0),
        bnkit.preset("prior", prior_strength=4.0, update="ema"),
        bnkit.preset("ghost", ghost_size=3),
        bnkit.preset("renorm", r_max=1.5, d_max=0.5),
        bnkit.preset("pytorch"),
    ],
    ids=repr,
)
def test_second_derivatives_match_the_float64_reference(policy: bnkit.Policy) -> None:
    torch.manual_seed(0)
    layer = bnkit.apply(randomize(nn.BatchNorm1d(3).double()), policy).train()
    pristine = randomize(nn.BatchNorm1d(3).double())
    x = (torch.randn(7, 3, 4, dtype=torch.float64) * 2 + 1).requires_grad_()
    w = layer.weight
    ref_w = pristine.weight.detach().clone().requires_grad_()
    ref_b = pristine.bias.detach().clone().requires_grad_()

    def loss(y: torch.Tensor) -> torch.Tensor:
        return (y.sin() * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum()

    y = layer(x)
    (gx, gw) = torch.autograd.grad(loss(y), [x, w], create_graph=True)
    (ggx,) = torch.autograd.grad((gx.square().sum() + gw.square().sum()), [x])
    ref = reference_forward(
        policy, x, training=True, weight=ref_w, bias=ref_b,
        running_mean=pristine.running_mean, running_var=pristine.running_var,
        num_batches_tracked=int(pristine.num_batches_tracked),
    )  # fmt: skip
    (rgx, rgw) = torch.autograd.grad(loss(ref.output), [x, ref_w], create_graph=True)
    (rggx,) = torch.autograd.grad((rgx.square().sum() + rgw.square().sum()), [x])
    torch.testing.assert_close(gx, rgx, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ggx, rggx, rtol=1e-7, atol=1e-7)


def test_gradgradcheck_of_the_native_kernel_strategies() -> None:
    for policy in (bnkit.preset("prior", prior_strength=2.0), bnkit.preset("ghost", ghost_size=2)):
        layer = bnkit.apply(randomize(nn.BatchNorm1d(2).double()), policy).train()
        x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradgradcheck(layer, (x,), eps=1e-6, atol=1e-5)


def test_using_from_two_threads_on_one_model_is_refused_and_leaves_no_stale_policy() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    bnkit.apply(model, "frozen")
    inside, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def holder() -> None:
        with bnkit.using(model, "batch_stats"):
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert inside.wait(10)
    try:
        for change in (
            lambda: bnkit.using(model, "adapt").__enter__(),
            lambda: bnkit.apply(model, "adapt"),
            lambda: bnkit.unfreeze(model),
            lambda: bnkit.freeze(model),
        ):
            with pytest.raises(bnkit.LayerError, match=r"inside a bnkit\.using block of another"):
                change()
        assert bnkit.policy_of(model[1]) == bnkit.preset("batch_stats")
        model.eval()(torch.randn(4, 3))  # forwards from other threads run
    except BaseException as err:
        errors.append(err)
    finally:
        release.set()
        thread.join()
    assert not errors, errors
    assert bnkit.policy_of(model[1]) == bnkit.preset("frozen")  # the block's exit restored it
    with bnkit.using(model, "adapt"):  # and the layers are free again
        assert bnkit.policy_of(model[1]) == bnkit.preset("adapt")


def test_nested_using_in_one_thread_restores_in_order() -> None:
    model = nn.Sequential(nn.BatchNorm1d(3))
    with bnkit.using(model, "adapt"), bnkit.using(model, "frozen"):
        assert bnkit.policy_of(model[0]) == bnkit.preset("frozen")
    assert bnkit.managed_layers(model) == []


def test_a_refusal_names_the_other_threads_block_and_the_layer() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    inside, release = threading.Event(), threading.Event()

    def holder() -> None:
        with bnkit.mask(model, torch.ones(2, 4, dtype=torch.bool)):
            inside.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert inside.wait(10)
    try:
        with pytest.raises(bnkit.LayerError, match=r"layer '1' is inside a bnkit\.mask block"):
            bnkit.unfreeze(model)
        with pytest.raises(bnkit.LayerError, match=r"layer '1' is inside a bnkit\.mask block"):
            bnkit.using(model, "frozen").__enter__()
    finally:
        release.set()
        thread.join()
