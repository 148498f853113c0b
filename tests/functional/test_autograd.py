"""Second derivatives through the strategies' autograd Functions equal those of the same
formulas written with differentiable ops, whichever of gamma/beta exist or are frozen."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from bnkit import functional as BF
from bnkit.functional._autograd import ghost_composite
from bnkit.functional.stats import moments, per_channel

EPS = 1e-5
Fn = Callable[[Tensor, Tensor | None, Tensor | None], Tensor]


def _ghost(x: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
    return BF.ghost_normalize(x, w, b, EPS, [3, 3])[0]


def _ghost_ref(x: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
    return ghost_composite(x, w, b, [3, 3], EPS)[0]


RM = torch.linspace(-0.5, 0.5, 3, dtype=torch.float64)
RV = torch.linspace(0.5, 2, 3, dtype=torch.float64)


def _prior(x: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
    return BF.mixed_normalize(x, w, b, RM, RV, 0.25, EPS)[0]


def _prior_ref(x: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
    mean, var = moments(x)
    m, v = BF.prior_mix(0.25, RM, RV, mean, var)
    return BF.affine_normalize(x, m, v, w, b, EPS)


def _on_stats(x: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
    mean, var = BF.batch_stats(x)
    return BF.normalize_on_stats(x, w, b, mean, var, EPS)


def _on_stats_ref(x: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
    return F.batch_norm(x, None, None, w, b, True, 0.0, EPS)


CASES = {
    "ghost": (_ghost, _ghost_ref),
    "prior": (_prior, _prior_ref),
    "renorm": (_on_stats, _on_stats_ref),
}


def _second(fn: Fn, x: Tensor, w: Tensor | None, b: Tensor | None) -> list[Tensor]:
    x = x.detach().requires_grad_()
    params = [p for p in (w, b) if p is not None and p.requires_grad]
    g = torch.linspace(-1, 1, x.numel(), dtype=x.dtype).reshape(x.shape)
    out = fn(x, w, b)
    first = torch.autograd.grad((out * g).sum(), [x, *params], create_graph=True)
    scale = per_channel(torch.arange(1.0, 4.0, dtype=x.dtype), x)
    penalty = sum(((f * scale) if f.dim() > 1 else f).square().sum() for f in first)
    second = torch.autograd.grad(penalty, [x, *params], allow_unused=True)
    return [
        torch.zeros_like(p) if s is None else s for s, p in zip(second, [x, *params], strict=True)
    ]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("affine", ["trainable", "frozen", "none", "weight only"])
def test_double_backward_matches_the_composite(case: str, affine: str) -> None:
    fn, ref = CASES[case]
    x = torch.randn(6, 3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    w: Tensor | None = torch.tensor([0.5, 1.5, 2.0], dtype=torch.float64)
    b: Tensor | None = torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    if affine == "none":
        w = b = None
    elif affine == "weight only":
        b = None
    if affine != "frozen":
        for p in (w, b):
            if p is not None:
                p.requires_grad_()
    got, expected = _second(fn, x, w, b), _second(ref, x, w, b)
    assert len(got) == len(expected)
    for a, e in zip(got, expected, strict=True):
        torch.testing.assert_close(a, e)
