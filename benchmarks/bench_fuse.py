"""Eval speed of fused models against unfused: a small ResNet (8 blocks, 32x32 input), and
torchvision's and timm's resnet18 at 224x224 (built offline, random weights).

Single forward passes of the two models alternate (A B B A ...) under ``torch.no_grad`` so
that both see the same machine state; the table reports the 10th-percentile and median step
times and the ratio unfused / fused (above 1: the fused model is faster), per batch size. The
largest output difference between the two models is printed too.

A third model, timed in the same rotation, is the unfused one with every BatchNorm layer
replaced by ``nn.Identity`` (wrong numbers, timing only): no fusion can be faster than leaving
BatchNorm out, so ``unfused / no BN`` is the ceiling of what fusion can gain on this machine,
whatever the goal.

    python benchmarks/bench_fuse.py [--model small|torchvision|timm] [--batches 1,64]
        [--steps 300] [--width 16] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

import bnkit
from _resnet import resnet


def build(kind: str, width: int) -> tuple[nn.Module, int]:
    """The model and its input size."""
    if kind == "small":
        return resnet(width=width), 32
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.torchvision_shim import install

    install()
    torch.manual_seed(0)
    if kind == "torchvision":
        import torchvision

        return torchvision.models.resnet18(weights=None), 224
    import timm

    return timm.create_model("resnet18", pretrained=False), 224


def paired(*fns: Callable[[], object], steps: int) -> list[list[float]]:
    """Step times of each of ``fns``, run in rotating order (A B C, B C A, C A B, ...)."""
    for _ in range(5):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for i in range(steps):
        for j in range(len(fns)):
            k = (i + j) % len(fns)
            start = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - start)
    return times


def without_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every BatchNorm layer replaced by ``nn.Identity``."""
    bare = copy.deepcopy(model)
    for name, module in list(bare.named_modules()):
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            parent, _, child = name.rpartition(".")
            setattr(bare.get_submodule(parent) if parent else bare, child, nn.Identity())
    return bare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", default="1,64", help="batch sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--model", default="small", choices=["small", "torchvision", "timm"])
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, size = build(args.model, args.width)
    model.eval()
    _randomize_statistics(model)
    fused = bnkit.fuse(model)
    bare = without_batchnorm(model)
    print(bnkit.convert.fuse_plan(model).__str__().splitlines()[0])
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        x = torch.randn(batch, 3, size, size)
        with torch.no_grad():
            diff = (fused(x) - model(x)).abs().max().item()
            times = paired(
                lambda x=x: model(x), lambda x=x: fused(x), lambda x=x: bare(x), steps=args.steps
            )
        p10 = [statistics.quantiles(t, n=10)[0] for t in times]
        med = [statistics.median(t) for t in times]
        rows.append((batch, p10, med, diff))
    print(
        f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, model {args.model}, 3x{size}x{size} input, "
        f"{args.steps} interleaved steps per batch size\n"
    )
    print(
        "| batch | unfused p10 ms | fused p10 ms | no BN p10 ms | ratio (p10) | ratio (median) "
        "| ceiling: unfused / no BN (p10) | max abs diff |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for batch, p10, med, diff in rows:
        print(
            f"| {batch} | {1e3 * p10[0]:.2f} | {1e3 * p10[1]:.2f} | {1e3 * p10[2]:.2f} | "
            f"{p10[0] / p10[1]:.2f} | {med[0] / med[1]:.2f} | {p10[0] / p10[2]:.2f} | {diff:.1e} |"
        )


def _randomize_statistics(model: nn.Module) -> None:
    """Pretrained-like BatchNorm values (random init has gamma 1, beta 0, statistics 0/1)."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_var is not None:
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


if __name__ == "__main__":
    main()
