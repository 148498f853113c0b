"""Autograd functions of the strategies, on BatchNorm's native kernels.

Each has a fast backward on the native kernels; when a second derivative is asked for
(``create_graph=True``) the backward instead differentiates a composite of differentiable ops,
so double backward is exact rather than silently wrong.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from bnkit.functional.stats import per_channel, values_per_channel

__all__ = ["BatchNormOnStats", "GhostBatchNorm", "MixedNormalize", "dense", "ghost_composite"]


def dense(x: Tensor) -> Tensor:
    """``x`` itself when it is dense (contiguous or channels-last), else a contiguous copy.

    Slices of a dense tensor along dim 0 are dense, so kernels may write into them.
    """
    if x.is_contiguous():
        return x
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return x
    return x.contiguous()


def _format(x: Tensor) -> torch.memory_format:
    """The memory format ``x`` is dense in (see :func:`dense`)."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def _saved_dtype(x: Tensor, weight: Tensor | None) -> torch.dtype:
    """The dtype BatchNorm's kernel saves its statistics in: on CPU the parameters' (the
    input's without them), elsewhere float32 for half-precision input."""
    if x.device.type == "cpu":
        return weight.dtype if weight is not None else x.dtype
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def ghost_composite(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, sizes: list[int], eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Ghost batches from differentiable ops (compiled graphs and second derivatives)."""
    outs, means, invstds = [], [], []
    for chunk in torch.split(x, sizes, dim=0):
        out, mean, invstd = torch.native_batch_norm(chunk, weight, bias, None, None, True, 0.0, eps)
        outs.append(out)
        means.append(mean.detach())
        invstds.append(invstd.detach())
    return torch.cat(outs, dim=0), torch.stack(means), torch.stack(invstds)


def _needed(needs: tuple[bool, ...], *grads: Tensor | None) -> tuple[Tensor | None, ...]:
    """One gradient per forward input: ``grads`` where asked for, None elsewhere and after them."""
    return tuple(g if need else None for g, need in itertools.zip_longest(grads, needs))


def _grads(out: Tensor, inputs: tuple[Tensor | None, ...], dy: Tensor) -> tuple[Tensor | None, ...]:
    """d(out)/d(inputs)·dy with a graph (for second derivatives); None where not needed."""
    wanted = [t for t in inputs if t is not None and t.requires_grad]
    found = iter(torch.autograd.grad(out, wanted, dy, create_graph=True, allow_unused=True))
    return tuple(next(found) if t is not None and t.requires_grad else None for t in inputs)


class GhostBatchNorm(torch.autograd.Function):
    """BatchNorm over consecutive groups of samples, each group on the native kernels.

    Every group is normalized straight into its slice of one output (no concatenation), and
    its backward is BatchNorm's own backward on that slice.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        sizes: list[int],
        eps: float,
        stats: list[Tensor],
    ) -> Tensor:
        x = dense(x)
        out = torch.empty_like(x)
        acc = _saved_dtype(x, weight)
        means = x.new_empty((len(sizes), x.shape[1]), dtype=acc)
        invstds = x.new_empty((len(sizes), x.shape[1]), dtype=acc)
        start = 0
        for i, size in enumerate(sizes):
            rows = slice(start, start + size)
            torch.ops.aten.native_batch_norm.out(
                x[rows], weight, bias, None, None, True, 0.0, eps,
                out=out[rows], save_mean=means[i], save_invstd=invstds[i],
            )  # fmt: skip
            start += size
        ctx.save_for_backward(x, weight, bias, means, invstds)
        ctx.sizes, ctx.eps = sizes, eps
        stats.extend([means, invstds])
        return out

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias, means, invstds = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():
            with torch.enable_grad():
                out = ghost_composite(x, weight, bias, ctx.sizes, ctx.eps)[0]
            return _needed(needs, *_grads(out, (x, weight, bias), dy))
        dx = torch.empty_like(x)
        dy = dy.contiguous(memory_format=_format(x))
        channels = x.shape[1]
        grad_dtype = weight.dtype if weight is not None else x.dtype
        dweights = x.new_empty((len(ctx.sizes), channels), dtype=grad_dtype)
        dbiases = x.new_empty((len(ctx.sizes), channels), dtype=grad_dtype)
        start = 0
        for i, size in enumerate(ctx.sizes):
            rows = slice(start, start + size)
            torch.ops.aten.native_batch_norm_backward.out(
                dy[rows], x[rows], weight, None, None, means[i], invstds[i], True, ctx.eps,
                [True, True, True], out0=dx[rows], out1=dweights[i], out2=dbiases[i],
            )  # fmt: skip
            start += size
        dweight = dweights.sum(0) if weight is not None else None
        dbias = dbiases.sum(0) if bias is not None else None
        return _needed(needs, dx, dweight, dbias)


class MixedNormalize(torch.autograd.Function):
    """Normalization with running statistics mixed with the batch's, on native kernels.

    ``mean`` and ``var`` are the mixed statistics, ``w`` the weight of the running ones;
    ``composite(x, weight, bias)`` computes the same output from differentiable ops, for second
    derivatives. The gradient through the batch part of the mix is added to the eval-mode
    BatchNorm gradient; with s = 1/sqrt(var + eps), batch mean m_B and n values per channel::

        dx = γ s [dy − (1−w)/n · Σdy − (1−w) s/n · Σ(dy·x̂) · (x − m_B)]
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        mean: Tensor,
        var: Tensor,
        batch_mean: Tensor,
        w: float,
        eps: float,
        composite: Callable[[Tensor, Tensor | None, Tensor | None], Tensor],
    ) -> Tensor:
        ctx.save_for_backward(x, weight, bias, mean, var, batch_mean)
        ctx.w, ctx.eps, ctx.n, ctx.composite = w, eps, values_per_channel(x), composite
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias, mean, var, batch_mean = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():
            with torch.enable_grad():
                out = ctx.composite(x, weight, bias)
            return _needed(needs, *_grads(out, (x, weight, bias), dy))
        # The reductions Σdy·x̂ and Σdy from BatchNorm's own backward kernel (one pass)...
        _, dweight, dbias = torch.ops.aten.native_batch_norm_backward(
            dy, x, weight, mean, var, None, None, False, ctx.eps, [False, True, True]
        )
        dx = None
        if needs[0]:
            invstd = torch.rsqrt(var + ctx.eps)
            gamma = invstd if weight is None else weight * invstd
            k = (1.0 - ctx.w) / ctx.n
            a = gamma * invstd * dweight * k
            c = gamma * dbias * k - a * batch_mean
            # ...then dx = γs·dy − a·x − c in two passes (no third over dx)
            dx = torch.addcmul(per_channel(-c, x).to(x.dtype), x, per_channel(-a, x).to(x.dtype))
            dx.addcmul_(dy, per_channel(gamma, x).to(x.dtype))
        return _needed(needs, dx, dweight, dbias)


class BatchNormOnStats(torch.autograd.Function):
    """BatchNorm of ``x`` with its batch statistics computed beforehand (gradients flow through
    them as in train mode): one normalizing pass forward, BatchNorm's own backward.

    Batch renormalization needs the batch statistics before it can normalize (for ``r`` and
    ``d``); with this function they are computed once instead of again inside the kernel.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        mean: Tensor,
        var: Tensor,
        eps: float,
    ) -> Tensor:
        invstd = torch.rsqrt(var + eps)
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.eps = eps
        return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias, mean, invstd = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():
            with torch.enable_grad():
                out = F.batch_norm(x, None, None, weight, bias, True, 0.0, ctx.eps)
            return _needed(needs, *_grads(out, (x, weight, bias), dy))
        dx, dweight, dbias = torch.ops.aten.native_batch_norm_backward(
            dy, x, weight, None, None, mean, invstd, True, ctx.eps, [needs[0], True, True]
        )
        return _needed(needs, dx, dweight, dbias)
