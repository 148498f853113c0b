"""PyTorch's own BatchNorm test inputs, bit for bit through the ``pytorch`` preset.

``torch.testing._internal.common_modules.module_db`` holds the constructor arguments and
inputs PyTorch tests ``nn.BatchNorm1d/2d/3d`` with: momentum 0.8 and ``None``, no affine, no
tracking, ``bias=False`` alone, 3D input to ``BatchNorm1d``, and zero-size batches. Each runs
two forward/backward steps (train) or one forward (eval) on a plain layer and on the same layer
under bnkit's ``pytorch`` preset (``batch_stats`` for a layer built without running
statistics): outputs, input and parameter gradients, buffers.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn as nn
from torch import Tensor

import bnkit


def _cases() -> list[Any]:
    from torch.testing._internal.common_modules import module_db

    cases = []
    for info in module_db:
        if not issubclass(info.module_cls, nn.modules.batchnorm._BatchNorm):
            continue
        for dtype in (torch.float32, torch.float64):
            for training in (True, False):
                inputs = info.module_inputs_func(
                    info, device="cpu", dtype=dtype, requires_grad=True, training=training
                )
                for i, case in enumerate(inputs):
                    name = f"{info.name}-{case.desc or i}-{dtype}-{'train' if training else 'eval'}"
                    cases.append(pytest.param(info.module_cls, case, dtype, training, id=name))
    return cases


def _fresh(arg: Any) -> Any:
    if isinstance(arg, Tensor):
        return arg.detach().clone().requires_grad_(arg.requires_grad)
    return arg


def _run(layer: nn.Module, case: Any, training: bool) -> list[Tensor | None]:
    layer.train(training)
    seen: list[Tensor | None] = []
    gen = torch.Generator().manual_seed(3)
    for _ in range(2 if training else 1):
        args = [_fresh(a) for a in case.forward_input.args]
        out = layer(*args, **case.forward_input.kwargs)
        seen.append(out.detach().clone())
        if out.requires_grad:
            out.backward(torch.randn(out.shape, generator=gen, dtype=out.dtype))
            seen += [a.grad for a in args if isinstance(a, Tensor)]
            seen += [None if p.grad is None else p.grad.clone() for p in layer.parameters()]
            layer.zero_grad()
        seen += [b.clone() for b in layer.buffers()]
    return seen


@pytest.mark.parametrize(("cls", "case", "dtype", "training"), _cases())
def test_pytorch_preset_is_bitwise_on_pytorch_test_inputs(
    cls: type[nn.Module], case: Any, dtype: torch.dtype, training: bool
) -> None:
    made = case.constructor_input
    torch.manual_seed(0)
    plain = cls(*made.args, **made.kwargs).to(dtype)
    torch.manual_seed(0)
    ours = cls(*made.args, **made.kwargs).to(dtype)
    # A layer built without running statistics always normalizes with the batch's: that is
    # bnkit's `batch_stats` (`pytorch` needs running statistics to update, and says so).
    tracking = getattr(ours, "running_mean", None) is not None
    bnkit.apply(ours, "pytorch" if tracking else "batch_stats")
    theirs, mine = _run(plain, case, training), _run(ours, case, training)
    assert len(theirs) == len(mine)
    for a, b in zip(mine, theirs, strict=True):
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
