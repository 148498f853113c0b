"""Forward+backward time of the strategies PyTorch lacks, against native train-mode BatchNorm.

Batch renormalization, ghost batches and prior mixing on the same tensor as
``bench_forward.py``, timed interleaved with native ``nn.BatchNorm2d`` in ``train()`` (same method:
10th-percentile step times of alternating steps).

    python benchmarks/bench_strategies.py [--shape 32,64,56,56 | 256,512] [--steps 200]
        [--compile]

A 2D shape times ``nn.BatchNorm1d`` (channels-last is then the same layout, and skipped);
``--compile`` compiles both layers (inductor) and times them after warm-up.

Two reference rows (eager only) measure floors rather than bnkit: ``floor: Python autograd
Function`` is native BatchNorm's own forward and backward kernels called from a minimal
``torch.autograd.Function`` — what any BatchNorm variant written in Python on PyTorch's kernels
pays at least; ``floor: ghost by hand`` is ghost batches as users write them (TabNet's way:
``torch.chunk``, one ``nn.BatchNorm1d`` call per chunk, ``torch.cat``); ``floor: prior's kernels
alone`` is ``bnkit.functional.mixed_normalize`` without a managed layer around it (no update of
the running statistics, no guard, no dispatch).
"""

from __future__ import annotations

import argparse
import copy
import platform
from collections.abc import Callable

import torch
import torch.nn as nn

import bnkit
from bench_forward import paired_times, step_fn
from bnkit import functional as BF

CASES: dict[str, bnkit.Policy] = {
    "renorm (r_max 3, d_max 5)": bnkit.preset("renorm"),
    "ghost (8 per ghost)": bnkit.preset("ghost", ghost_size=8),
    "prior (N=16)": bnkit.preset("prior"),
    "prior (N=16), EMA update": bnkit.preset("prior", update="ema"),
}
GOAL = 1.10


class _Kernels(torch.autograd.Function):
    """Native train-mode BatchNorm, forward and backward kernels, called from Python."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps):  # type: ignore[no-untyped-def, override]
        out, mean, invstd = torch.native_batch_norm(
            x, weight, bias, running_mean, running_var, True, 0.1, eps
        )
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.eps = eps
        return out

    @staticmethod
    def backward(ctx, dy):  # type: ignore[no-untyped-def, override]
        x, weight, mean, invstd = ctx.saved_tensors
        dx, dw, db = torch.ops.aten.native_batch_norm_backward(
            dy, x, weight, None, None, mean, invstd, True, ctx.eps, [True, True, True]
        )
        return dx, dw, db, None, None, None


BN = nn.modules.batchnorm._BatchNorm


def _python_floor(bn: BN, x: torch.Tensor) -> torch.Tensor:
    return _Kernels.apply(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.eps)  # type: ignore[no-any-return]


def _ghost_by_hand(bn: BN, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([bn(c) for c in x.chunk(max(1, -(-x.shape[0] // 8)), 0)], 0)


def _prior_kernels(bn: BN, x: torch.Tensor) -> torch.Tensor:
    """Prior mixing from ``bnkit.functional`` alone: its kernels, without the layer's update."""
    w = BF.prior_weight(16.0, x.shape[0])
    assert bn.running_mean is not None and bn.running_var is not None
    mean, var = bn.running_mean, bn.running_var
    return BF.mixed_normalize(x, bn.weight, bn.bias, mean, var, w, bn.eps)[0]


class Floor(nn.Module):
    """A reference row: ``fn(bn, x)`` on the native layer ``bn``."""

    def __init__(self, bn: BN, fn: Callable[[BN, torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.bn, self.fn = bn, fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.bn, x)


FLOORS = {
    "floor: Python autograd Function": _python_floor,
    "floor: ghost by hand (chunk, BatchNorm, cat)": _ghost_by_hand,
    "floor: prior's kernels alone (no update)": _prior_kernels,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", default="32,64,56,56")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    rows = []
    layouts = (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last))
    if len(shape) != 4:
        layouts = layouts[:1]
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[len(shape)]
    cases: dict[str, object] = {**CASES, **({} if args.compile else FLOORS)}
    for layout, fmt in layouts:
        for name, policy in cases.items():
            native = cls(shape[1], device=args.device).train()
            with torch.no_grad():
                native.running_var.uniform_(0.5, 2.0)
            if isinstance(policy, bnkit.Policy):
                managed: nn.Module = bnkit.apply(copy.deepcopy(native), policy).train()
            else:
                managed = Floor(copy.deepcopy(native), policy).train()  # type: ignore[arg-type]
            if args.compile:
                native, managed = torch.compile(native), torch.compile(managed)  # type: ignore[assignment]
            x = torch.randn(shape, device=args.device).to(memory_format=fmt).requires_grad_(True)
            g = torch.randn(shape, device=args.device).to(memory_format=fmt)
            t_native, t_ours = paired_times(
                step_fn(native, x, g), step_fn(managed, x, g), args.steps
            )
            ratio = t_ours / t_native
            goal = GOAL if name in CASES else None
            rows.append((layout, name, 1e3 * t_native, 1e3 * t_ours, ratio, goal))
            print(f"{layout:13s} {name:45s} ratio {ratio:.3f}", flush=True)
    print(
        f"\n{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"device {args.device}, shape {shape}, {'compiled' if args.compile else 'eager'}, "
        "fwd+bwd vs native train mode\n"
    )
    print("| layout | policy | native train p10 ms | bnkit p10 ms | ratio | goal |")
    print("|---|---|---:|---:|---:|---:|")
    for layout, name, a, b, ratio, goal in rows:
        target = f"≤ {goal}" if goal else "—"
        print(f"| {layout} | {name} | {a:.2f} | {b:.2f} | {ratio:.3f} | {target} |")


if __name__ == "__main__":
    main()
