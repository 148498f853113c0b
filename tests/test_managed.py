"""Managed layers: bit-for-bit nn.BatchNorm wherever PyTorch can express the behaviour,
and the float64 reference everywhere."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from tests.helpers import (
    assert_bitwise,
    make_layer,
    managed_copy,
    native_twin,
    step,
    updates,
    uses_batch,
)

import bnkit
from bnkit.policy import Affine, Normalize, Phase, Policy, Update

NATIVE_PRESETS = ["pytorch", "frozen", "frozen_stats", "frozen_affine", "batch_stats"]
SHAPES = {2: (6, 3), 3: (4, 3, 5), 4: (4, 3, 5, 6), 5: (3, 3, 2, 4, 3)}


def _input(dim: int, dtype: torch.dtype, channels_last: bool, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(SHAPES[dim], generator=g, dtype=dtype) * 2 + 0.5
    if channels_last and dim == 4:
        x = x.to(memory_format=torch.channels_last)
    if channels_last and dim == 5:
        x = x.to(memory_format=torch.channels_last_3d)
    return x


LAYOUTS = [(2, False), (3, False), (4, False), (4, True), (5, False), (5, True)]


@pytest.mark.parametrize("preset", NATIVE_PRESETS)
@pytest.mark.parametrize(("dim", "channels_last"), LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False])
def test_presets_are_bitwise_native(
    preset: str, dim: int, dtype: torch.dtype, channels_last: bool, training: bool
) -> None:
    layer = make_layer(dim, 3, dtype)
    policy = bnkit.preset(preset)
    ours = managed_copy(layer, policy).train(training)
    twin = native_twin(layer, policy, training)
    assert twin is not None
    for seed in range(2):  # two steps: the state carried between them must match too
        x = _input(dim, dtype, channels_last, seed)
        a, b = step(ours, x, seed), step(twin, x, seed)
        assert_bitwise(a, b)
        if channels_last:
            fmt = torch.channels_last if dim == 4 else torch.channels_last_3d
            assert b["y"] is not None and a["y"] is not None
            assert a["y"].is_contiguous(memory_format=fmt) == b["y"].is_contiguous(
                memory_format=fmt
            )


def test_cumulative_update_is_bitwise_momentum_none() -> None:
    layer = make_layer(4, 3)
    ours = managed_copy(layer, Policy(update="cumulative"))
    twin = native_twin(layer, bnkit.policy_of(ours), True)
    assert twin is not None and twin.momentum is None
    for seed in range(3):
        assert_bitwise(
            step(ours, _input(4, torch.float32, False, seed)),
            step(twin, _input(4, torch.float32, False, seed)),
        )


def _policies() -> st.SearchStrategy[Policy]:
    @st.composite
    def build(draw: st.DrawFn) -> Policy:
        update = draw(st.sampled_from(list(Update)))
        normalize = draw(st.sampled_from(list(Normalize)))
        kwargs: dict[str, object] = {
            "normalize": normalize,
            "update": update,
            "affine": draw(st.sampled_from(list(Affine))),
        }
        if normalize is Normalize.RENORM:
            kwargs["r_max"] = draw(st.floats(1.0, 4.0))
            kwargs["d_max"] = draw(st.floats(0.0, 6.0))
            kwargs["renorm_warmup"] = draw(st.integers(0, 4))
            kwargs["renorm_ramp"] = draw(st.integers(0, 4))
        if normalize is Normalize.GHOST:
            kwargs["ghost_size"] = draw(st.integers(1, 4))
        if normalize is Normalize.PRIOR:
            kwargs["prior_strength"] = draw(st.sampled_from([0.0, 0.5, 4.0, math.inf]))
        if update is Update.EMA:
            kwargs["momentum"] = draw(st.floats(0.001, 1.0))
        if update is not Update.NEVER:
            kwargs["update_in"] = draw(st.sampled_from(list(Phase)))
        return Policy(**kwargs)  # type: ignore[arg-type]

    return build()


@st.composite
def _cases(draw: st.DrawFn) -> tuple[int, tuple[int, ...], torch.dtype, float, bool, bool]:
    dim = draw(st.sampled_from([2, 3, 4, 5]))
    n = draw(st.integers(2, 5))
    c = draw(st.integers(1, 4))
    spatial = tuple(draw(st.integers(1, 4)) for _ in range(dim - 2))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    eps = draw(st.sampled_from([1e-5, 1e-3, 0.1]))
    return dim, (n, c, *spatial), dtype, eps, draw(st.booleans()), draw(st.booleans())


@given(policy=_policies(), case=_cases())
def test_any_policy_matches_native_when_expressible(
    policy: Policy, case: tuple[int, tuple[int, ...], torch.dtype, float, bool, bool]
) -> None:
    dim, shape, dtype, eps, training, channels_last = case
    layer = make_layer(dim, shape[1], dtype, eps=eps)
    ours = managed_copy(layer, policy).train(training)
    twin = native_twin(layer, policy, training)
    x = torch.randn(shape, dtype=dtype) * 3 - 1
    if channels_last and dim == 4:
        x = x.to(memory_format=torch.channels_last)
    if twin is None:
        return  # covered by the reference test below
    assert_bitwise(step(ours, x), step(twin, x))


def too_few_values(policy: Policy, training: bool, shape: tuple[int, ...]) -> bool:
    """Whether the layer must refuse the input: batch statistics from a single value."""
    spatial = math.prod(shape[2:])
    batch = uses_batch(policy, training)
    if policy.normalize is Normalize.PRIOR:
        batch = policy.prior_strength < math.inf
    smallest = shape[0]
    if policy.normalize is Normalize.GHOST and training and shape[0] > policy.ghost_size:
        # ghost groups split as torch.chunk does, into ceil(N / ghost_size) parts
        parts = torch.arange(shape[0]).chunk(math.ceil(shape[0] / policy.ghost_size))
        smallest = min(len(p) for p in parts)
    needs = batch is not False or updates(policy, training)
    return needs and smallest * spatial <= 1


TOL = {
    torch.float32: {"rtol": 2e-4, "atol": 2e-5},
    torch.float64: {"rtol": 1e-10, "atol": 1e-11},
}


@given(policy=_policies(), case=_cases())
def test_any_policy_matches_reference(
    policy: Policy, case: tuple[int, tuple[int, ...], torch.dtype, float, bool, bool]
) -> None:
    dim, shape, dtype, eps, training, _ = case
    layer = make_layer(dim, shape[1], dtype, eps=eps)
    ours = managed_copy(layer, policy).train(training)
    x = (torch.randn(shape, dtype=dtype) * 3 - 1).requires_grad_(True)
    if too_few_values(policy, training, shape):
        with pytest.raises(bnkit.InputError, match="needs more than 1 value per channel"):
            ours(x)
        return
    ref = bnkit.reference.reference_step(ours, x)  # reads the state before the forward
    xr = x.detach().clone().requires_grad_(True)
    # the reference gets its own copies of gamma/beta: its backward never fills the layer's
    weight = ours.weight.detach().clone().requires_grad_(True)  # type: ignore[union-attr]
    bias = ours.bias.detach().clone().requires_grad_(True)  # type: ignore[union-attr]
    ref_g = bnkit.reference.reference_forward(
        policy,
        xr,
        training=training,
        weight=weight,
        bias=bias,
        running_mean=ours.running_mean,
        running_var=ours.running_var,
        num_batches_tracked=int(ours.num_batches_tracked),  # type: ignore[arg-type]
        eps=eps,
    )
    y = ours(x)
    tol = TOL[dtype]
    torch.testing.assert_close(y.double(), ref.output.detach(), **tol)
    g = torch.randn_like(y)
    y.backward(g)
    ref_g.output.backward(g.double())
    assert x.grad is not None and xr.grad is not None
    torch.testing.assert_close(x.grad.double(), xr.grad.double(), **tol)
    assert ref.new_running_mean is not None and ref.new_running_var is not None
    torch.testing.assert_close(ours.running_mean.double(), ref.new_running_mean, **tol)  # type: ignore[union-attr]
    torch.testing.assert_close(ours.running_var.double(), ref.new_running_var, **tol)  # type: ignore[union-attr]
    assert int(ours.num_batches_tracked) == ref.new_num_batches_tracked  # type: ignore[arg-type]
    frozen = policy.affine is Affine.FROZEN
    assert (ours.weight.grad is None) == frozen  # type: ignore[union-attr]
    assert (weight.grad is None) == frozen and (bias.grad is None) == frozen
    if not frozen:
        grads = (ours.weight.grad, ours.bias.grad)  # type: ignore[union-attr]
        for got, want in zip(grads, (weight.grad, bias.grad), strict=True):
            assert got is not None and want is not None
            torch.testing.assert_close(got.double(), want.double(), **tol)


def test_adapt_normalizes_with_the_statistics_before_its_update() -> None:
    layer = make_layer(4, 3)
    ours = managed_copy(layer, "adapt").train()
    before_mean = ours.running_mean.clone()  # type: ignore[union-attr]
    before_var = ours.running_var.clone()  # type: ignore[union-attr]
    x = torch.randn(4, 3, 5, 5) * 4 + 2
    y = ours(x)
    expected = torch.nn.functional.batch_norm(
        x, before_mean, before_var, layer.weight, layer.bias, False, 0.0, layer.eps
    )
    assert torch.equal(y, expected)
    assert not torch.equal(ours.running_mean, before_mean)  # type: ignore[arg-type]
    # and the output of one sample does not depend on the rest of the batch
    assert torch.equal(ours.eval()(x[:1]), ours.train()(x[:1]))
