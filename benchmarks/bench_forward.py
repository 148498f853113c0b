"""Forward+backward time of bnkit-managed BatchNorm2d against native nn.BatchNorm2d.

Each policy is timed against the native layer that behaves the same way (``adapt``, which
PyTorch cannot express, against native train mode), side by side: single steps of the two
alternate (ABBA order) so that both see the same machine state, and the reported ratio is the
ratio of the 10th-percentile step times. On a shared VM a step's time spreads over 4x (large
fresh allocations page-fault); the low quantile of interleaved steps is stable to about 1 %,
the median is not.

    python benchmarks/bench_forward.py [--shape 32,64,56,56] [--rounds 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn

import bnkit

# policy -> (how the native twin is set up, the ratio bnkit aims for)
CASES: dict[str, tuple[str, float]] = {
    "pytorch (train)": ("train", 1.03),
    "pytorch (eval)": ("eval", 1.03),
    "frozen": ("eval, requires_grad=False", 1.03),
    "frozen_stats": ("eval", 1.03),
    "frozen_affine": ("train, requires_grad=False", 1.03),
    "batch_stats": ("train, track_running_stats=False", 1.03),
    "adapt": ("train (no PyTorch equivalent)", 1.10),
}


def layers(case: str, c: int, device: str) -> tuple[nn.Module, nn.Module]:
    native = nn.BatchNorm2d(c, device=device)
    preset = case.split(" ")[0]
    training = case != "pytorch (eval)" and preset != "frozen_stats" and preset != "frozen"
    managed = bnkit.apply(copy.deepcopy(native), preset).train(training)
    setup = CASES[case][0]
    if setup.startswith("eval"):
        native.eval()
    if "requires_grad=False" in setup:
        native.requires_grad_(False)
    if "track_running_stats=False" in setup:
        native.track_running_stats = False
    return native, managed


def step_fn(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> Callable[[], None]:
    params = [p for p in layer.parameters() if p.requires_grad]

    def run() -> None:
        y = layer(x)
        y.backward(g)
        x.grad = None
        for p in params:
            p.grad = None

    return run


def paired_times(
    fn_a: Callable[[], None], fn_b: Callable[[], None], steps: int
) -> tuple[float, float]:
    """10th-percentile step time of each function, measured interleaved (A B B A …)."""
    for _ in range(5):
        fn_a()
        fn_b()
    times_a, times_b = [], []
    for i in range(steps):
        order = ((fn_a, times_a), (fn_b, times_b))
        for fn, sink in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - start)
    return p10(times_a), p10(times_b)


def p10(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", default="32,64,56,56")
    parser.add_argument("--steps", type=int, default=300, help="interleaved steps per case")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--only", help="comma-separated policies to run (default: all)")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.shape.split(","))
    threads = torch.get_num_threads()
    results = []
    for fmt_name, fmt in (
        ("contiguous", torch.contiguous_format),
        ("channels_last", torch.channels_last),
    ):
        for case, (twin, goal) in CASES.items():
            if args.only and case.split(" ")[0] not in args.only.split(","):
                continue
            native, managed = layers(case, shape[1], args.device)
            x = torch.randn(shape, device=args.device).to(memory_format=fmt).requires_grad_(True)
            g = torch.randn(shape, device=args.device).to(memory_format=fmt)
            fn_native, fn_managed = step_fn(native, x, g), step_fn(managed, x, g)
            t_native, t_managed = paired_times(fn_native, fn_managed, args.steps)
            ratio = t_managed / t_native
            results.append(
                {
                    "layout": fmt_name,
                    "policy": case,
                    "native twin": twin,
                    "native p10 ms": round(1e3 * t_native, 2),
                    "bnkit p10 ms": round(1e3 * t_managed, 2),
                    "ratio": round(ratio, 3),
                    "goal": goal,
                    "ok": ratio <= goal,
                }
            )
            print(
                f"{fmt_name:13s} {case:16s} native {results[-1]['native p10 ms']:7.2f} ms  "
                f"bnkit {results[-1]['bnkit p10 ms']:7.2f} ms  ratio {ratio:.3f} (goal ≤ {goal})",
                flush=True,
            )
    header = "| layout | policy | native twin | native p10 ms | bnkit p10 ms | ratio | goal |"
    print(
        f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{threads} threads, device {args.device}, shape {shape}, fwd+bwd\n"
    )
    print(header)
    print("|---|---|---|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['layout']} | {r['policy']} | {r['native twin']} | {r['native p10 ms']} | "
            f"{r['bnkit p10 ms']} | {r['ratio']} | ≤ {r['goal']} |"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
