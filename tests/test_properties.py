"""Every policy, on every layout, dtype, batch size and phase, against the independent float64
reference (outputs, input grads, gamma/beta grads, buffers, counter) and, where PyTorch can
express the policy, against nn.BatchNorm bit for bit.

Each example asserts: either the forward runs and matches, or bnkit refuses it with an
InputError and leaves every buffer as it was.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch.nn as nn
from hypothesis import given, note
from hypothesis import strategies as st
from tests.helpers import native_twin

import bnkit
from bnkit.errors import InputError
from bnkit.reference import reference_forward

BN = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
LAYOUTS = ["contiguous", "channels_last", "channel_slice", "permuted", "expanded"]
DTYPES = [torch.float64, torch.float32, torch.bfloat16, torch.float16]
# (output/input-grad tolerance, buffer tolerance) against float64, per dtype
TOL = {
    torch.float64: (1e-9, 1e-9),
    torch.float32: (2e-4, 1e-5),
    torch.bfloat16: (1e-1, 2e-2),
    torch.float16: (2e-2, 2e-3),
}


NAMES = [
    *["pytorch", "frozen", "frozen_stats", "frozen_affine", "batch_stats", "adapt"],
    *["renorm", "ghost", "prior", "cumulative", "always"],
]


@st.composite
def policies(draw: st.DrawFn) -> bnkit.Policy:
    name = draw(st.sampled_from(NAMES))
    if name == "renorm":
        return bnkit.preset(
            "renorm",
            r_max=draw(st.sampled_from([1.0, 1.5, 3.0])),
            d_max=draw(st.sampled_from([0.0, 0.5, 5.0])),
        )
    if name == "ghost":
        return bnkit.preset("ghost", ghost_size=draw(st.integers(2, 5)))
    if name == "prior":
        strength = draw(st.sampled_from([0.0, 2.0, 16.0, math.inf]))
        return bnkit.preset(
            "prior", prior_strength=strength, update=draw(st.sampled_from(["never", "ema"]))
        )
    if name == "cumulative":
        return bnkit.Policy(update="cumulative")
    if name == "always":
        return bnkit.preset("adapt", update_in="always", normalize="batch")
    return bnkit.preset(name)


def make_input(
    shape: tuple[int, ...], layout: str, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """``(leaf, view)``: ``view(leaf)`` is the input with the layout asked for, and gradients
    land on the leaf."""
    g = torch.Generator().manual_seed(seed)
    n, c, *rest = shape
    if layout == "channel_slice":  # every other channel of a wider tensor
        leaf = torch.randn(n, 2 * c, *rest, generator=g) * 2 + 1
        return leaf.to(dtype), lambda t: t[:, ::2]
    if layout == "permuted" and len(rest) >= 2:  # the last two dims swapped
        leaf = torch.randn(n, c, *rest[::-1], generator=g) * 2 + 1
        return leaf.to(dtype), lambda t: t.transpose(-1, -2)
    if layout == "expanded" and rest:  # stride 0 along the last dim
        leaf = torch.randn(n, c, *rest[:-1], 1, generator=g) * 2 + 1
        return leaf.to(dtype), lambda t: t.expand(n, c, *rest)
    leaf = (torch.randn(*shape, generator=g) * 2 + 1).to(dtype)
    if layout == "channels_last" and len(shape) in (4, 5):
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        leaf = leaf.contiguous(memory_format=fmt)
    return leaf, lambda t: t


def make_layer(dim: int, c: int, dtype: torch.dtype, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed + 100)
    layer = BN[dim](c)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(c, generator=g) + 0.5)
        layer.bias.copy_(torch.randn(c, generator=g))
        layer.running_mean.copy_(torch.randn(c, generator=g))
        layer.running_var.copy_(torch.rand(c, generator=g) + 0.5)
        layer.num_batches_tracked.fill_(3)
    return layer.to(dtype)


@given(
    policy=policies(),
    dim=st.sampled_from([2, 3, 4, 5]),
    layout=st.sampled_from(LAYOUTS),
    dtype=st.sampled_from(DTYPES),
    n=st.sampled_from([0, 1, 2, 3, 5, 7, 9, 11]),
    training=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_every_policy_matches_the_float64_reference(
    policy: bnkit.Policy,
    dim: int,
    layout: str,
    dtype: torch.dtype,
    n: int,
    training: bool,
    seed: int,
) -> None:
    c = 3
    shape = (n, c, *([3, 2, 2][: dim - 2]))
    layer = make_layer(dim, c, dtype, seed)
    pristine = copy.deepcopy(layer)
    bnkit.apply(layer, policy).train(training)
    leaf, view = make_input(shape, layout, dtype, seed)
    leaf.requires_grad_()
    x = view(leaf)
    note(f"x: shape {tuple(x.shape)} strides {x.stride()}")
    before = [b.clone() for b in layer.buffers()]
    try:
        y = layer(x)
    except InputError:
        # refused only for too few values per channel where the batch's statistics are needed
        assert n * math.prod(shape[2:]) <= 1 or policy.normalize.value == "ghost"
        assert all(torch.equal(a, b) for a, b in zip(before, layer.buffers(), strict=True))
        return
    # The reference gets its own float64 copies: its gradients never land on the layer's.
    leaf64 = leaf.detach().double().requires_grad_()
    weight = pristine.weight.detach().double().requires_grad_()
    bias = pristine.bias.detach().double().requires_grad_()
    ref = reference_forward(
        policy,
        view(leaf64),
        training=training,
        weight=weight,
        bias=bias,
        running_mean=pristine.running_mean,
        running_var=pristine.running_var,
        num_batches_tracked=int(pristine.num_batches_tracked),
        eps=layer.eps,
        momentum=pristine.momentum,
    )
    out_tol, buf_tol = TOL[dtype]
    if dtype in (torch.float16, torch.bfloat16) and n * math.prod(shape[2:]) > 0:
        # half-precision kernels round the statistics too: an error of |x|·2^-8 in the mean is
        # |x|/σ of them in the output, so the tolerance grows with that conditioning
        means, variances = (
            ref.details.get("means", ref.batch_mean),
            ref.details.get("vars", ref.batch_var),
        )
        ratio = (means.abs() + 1) / torch.sqrt(variances + layer.eps)  # per ghost batch too
        out_tol *= max(1.0, float(ratio.max()) / 4)
    assert y.dtype == dtype and y.shape == x.shape
    torch.testing.assert_close(y.double(), ref.output.detach(), rtol=out_tol, atol=out_tol)
    dy = torch.randn(
        y.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64
    )
    (y.double() * dy).sum().backward()
    frozen = policy.affine.value == "frozen"
    wanted = [leaf64] if frozen else [leaf64, weight, bias]
    expected = torch.autograd.grad((ref.output * dy).sum(), wanted, allow_unused=True)
    values = max(1.0, float(n * math.prod(shape[2:])))
    assert leaf.grad is not None and expected[0] is not None
    scale = max([1.0, *expected[0].abs().flatten().tolist()])  # degenerate inputs: large grads
    torch.testing.assert_close(
        leaf.grad.double(), expected[0], rtol=out_tol, atol=out_tol * 10 * scale
    )
    assert (layer.weight.grad is None) == frozen and (layer.bias.grad is None) == frozen
    if not frozen:
        for got, want in zip((layer.weight.grad, layer.bias.grad), expected[1:], strict=True):
            assert got is not None and want is not None
            torch.testing.assert_close(got.double(), want, rtol=out_tol, atol=out_tol * values)
    assert ref.new_running_mean is not None and ref.new_running_var is not None
    torch.testing.assert_close(
        layer.running_mean.double(), ref.new_running_mean, rtol=buf_tol, atol=buf_tol
    )
    torch.testing.assert_close(
        layer.running_var.double(), ref.new_running_var, rtol=buf_tol, atol=buf_tol
    )
    assert int(layer.num_batches_tracked) == ref.new_num_batches_tracked
    twin = native_twin(pristine, policy, training)
    if twin is not None:  # PyTorch can express this policy: the very same numbers
        leaf2 = leaf.detach().clone().requires_grad_()
        y2 = twin(view(leaf2))
        assert torch.equal(y, y2)
        (y2.double() * dy).sum().backward()
        assert leaf2.grad is not None and torch.equal(leaf.grad, leaf2.grad)
        for mine, theirs in zip(layer.buffers(), twin.buffers(), strict=True):
            assert torch.equal(mine, theirs)
