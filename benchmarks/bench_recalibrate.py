"""Recalibration time: bnkit.recalibrate against fvcore's update_bn_stats and torch's update_bn.

The same model (a small ResNet, 8 blocks, 32x32 input), the same data and the same number of
samples for every method. One run of each method per round, in rotating order (A B C, B C A,
C A B, ...) so that all of them see the same machine state; the table reports the median run
time over the rounds and the ratio of each peer's median to bnkit's (above 1: bnkit faster).

Cases:
  all layers   every BatchNorm layer recalibrated (fvcore: all layers in train(); torch:
               update_bn always does every layer); bnkit with the population estimator
               (fvcore's numbers) and the cumulative one (update_bn's numbers).
  stem+stage1  only the stem and first-stage layers (fvcore: only those in train(); torch's
               update_bn cannot select layers and is left out).

Each case also times its floor: a no-grad forward of the same model over the same data,
stopped after the last selected BatchNorm layer, in eval() (what any recalibration must at
least compute). The goal is bnkit within 1.15x of the floor, and 1.2x faster than the peers.

    python benchmarks/bench_recalibrate.py [--samples 2048] [--batch 128] [--rounds 9] [--width 16]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn
from torch.optim.swa_utils import update_bn

import bnkit
from _resnet import resnet

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from fvcore.nn.precise_bn import update_bn_stats

STAGE1 = ("1", "3", "4")  # the stem BN and the two blocks of stage 1


def in_stage1(name: str) -> bool:
    return name.split(".")[0] in STAGE1


def methods(base: nn.Module, data: list[torch.Tensor], case: str) -> dict[str, Callable[[], None]]:
    ours, cumulative, fv, tv = (copy.deepcopy(base).eval() for _ in range(4))
    where = None if case == "all layers" else (lambda n, m: in_stage1(n))
    for name, m in fv.named_modules():
        if isinstance(m, nn.BatchNorm2d) and (case == "all layers" or in_stage1(name)):
            m.train()
    out: dict[str, Callable[[], None]] = {
        "floor (no-grad forward)": floor(copy.deepcopy(base).eval(), data, where),
        "bnkit (population)": lambda: bnkit.recalibrate(ours, data, where=where, progress=False),
        "fvcore update_bn_stats": lambda: update_bn_stats(fv, data, num_iters=len(data)),
    }
    if case == "all layers":
        out["bnkit (cumulative)"] = lambda: bnkit.recalibrate(
            cumulative, data, estimator="cumulative", progress=False
        )
        out["torch update_bn"] = lambda: update_bn(data, tv)
    return out


class _StopError(Exception):
    """Ends a floor forward after the last selected layer."""


def floor(model: nn.Module, data: list[torch.Tensor], where: object) -> Callable[[], None]:
    """A no-grad eval forward over ``data`` that stops after the last selected BatchNorm."""
    chosen = [m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if where is not None:
        chosen = [
            m for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d) and in_stage1(n)
        ]
    last = chosen[-1]

    def stop(module: nn.Module, args: object, output: object) -> None:
        raise _StopError

    last.register_forward_hook(stop)

    def run() -> None:
        with torch.no_grad():
            for x in data:
                with contextlib.suppress(_StopError):
                    model(x)

    return run


def run(fns: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for name in names:  # warm-up
        fns[name]()
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--width", type=int, default=16, help="channels of the first stage")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    base = resnet(width=args.width)
    g = torch.Generator().manual_seed(1)
    data = [
        torch.randn(args.batch, 3, 32, 32, generator=g) * 1.5 + 0.3
        for _ in range(args.samples // args.batch)
    ]
    rows = []
    for case in ("all layers", "stem+stage1"):
        times = run(methods(base, data, case), args.rounds)
        ours = statistics.median(times["bnkit (population)"])
        for name, ts in times.items():
            median = statistics.median(ts)
            per_batch = median / len(data)
            rows.append(
                {
                    "case": case,
                    "method": name,
                    "median s": round(median, 3),
                    "min s": round(min(ts), 3),
                    "ms / batch": round(1e3 * per_batch, 1),
                    "peer / bnkit": round(median / ours, 2),
                }
            )
            print(f"{case:12s} {name:24s} median {median:.3f} s  ratio {median / ours:.2f}")
    print(
        f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, ResNet width {args.width}, {args.samples} samples "
        f"in batches of {args.batch}, {args.rounds} rounds\n"
    )
    print("| case | method | median s | min s | ms / batch | time / bnkit population |")
    # the floor's row reads: floor / bnkit, so bnkit / floor = 1 / that
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['case']} | {r['method']} | {r['median s']} | {r['min s']} | "
            f"{r['ms / batch']} | {r['peer / bnkit']} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
