"""Eval speed of a small ResNet (8 blocks, 32x32 input): bnkit.fuse'd against unfused.

Single forward passes of the two models alternate (A B B A ...) under ``torch.no_grad`` so
that both see the same machine state; the table reports the 10th-percentile and median step
times and the ratio unfused / fused (above 1: the fused model is faster), per batch size. The
largest output difference between the two models is printed too.

    python benchmarks/bench_fuse.py [--batches 1,64] [--steps 300] [--width 16]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

import bnkit
from _resnet import resnet


def paired(fn_a: Callable[[], object], fn_b: Callable[[], object], steps: int) -> list[list[float]]:
    for _ in range(5):
        fn_a()
        fn_b()
    times: list[list[float]] = [[], []]
    for i in range(steps):
        order = [(0, fn_a), (1, fn_b)]
        for k, fn in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", default="1,64", help="batch sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args()
    model = resnet(width=args.width).eval()
    fused = bnkit.fuse(model)
    print(bnkit.convert.fuse_plan(model).__str__().splitlines()[0])
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            diff = (fused(x) - model(x)).abs().max().item()
            times = paired(lambda x=x: model(x), lambda x=x: fused(x), args.steps)
        p10 = [statistics.quantiles(t, n=10)[0] for t in times]
        med = [statistics.median(t) for t in times]
        rows.append((batch, p10, med, diff))
    print(
        f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, 3x32x32 input, ResNet width {args.width}, "
        f"{args.steps} interleaved steps per batch size\n"
    )
    print("| batch | unfused p10 ms | fused p10 ms | ratio (p10) | ratio (median) | max abs diff |")
    print("|---:|---:|---:|---:|---:|---:|")
    for batch, p10, med, diff in rows:
        print(
            f"| {batch} | {1e3 * p10[0]:.2f} | {1e3 * p10[1]:.2f} | {p10[0] / p10[1]:.2f} | "
            f"{med[0] / med[1]:.2f} | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()
