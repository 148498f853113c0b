"""Overhead of ``bnkit.watch`` on a training step (forward, backward, SGD step).

Two copies of the same model train side by side; one is watched for the whole run (the watch
is entered once, as in a real loop). Single steps of the two alternate (A B B A …) so both see
the same machine state. Reported: the 10th-percentile step time of each, and the median of the
per-pair differences (B − A of adjacent steps), which stays stable on a loaded machine. The
``control`` row watches nothing: it shows the noise floor of the method.

Cases: ``hooks only`` (a watch that never records: ``every`` larger than the run), and a record
every 10 steps or every step.

It also times each record directly (the measurement a watch makes at a step boundary), which
is what ``every`` saves.

    python benchmarks/bench_watch.py [--steps 150] [--threads 1]

One thread by default: on a shared machine a second thread makes every step wait for a core.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

import bnkit


def small_cnn() -> nn.Module:
    """A CIFAR-sized CNN with 7 BatchNorm layers (about 0.3 M parameters)."""

    def block(i: int, o: int, stride: int = 1) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(
        *block(3, 32),
        *block(32, 32),
        *block(32, 64, 2),
        *block(64, 64),
        *block(64, 128, 2),
        *block(128, 128),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 64, bias=False),
        nn.BatchNorm1d(64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def bn_mlp() -> nn.Module:
    """A worst case: 8 BatchNorm layers around tiny matmuls, where the hooks dominate."""
    layers: list[nn.Module] = []
    for _ in range(8):
        layers += [nn.Linear(64, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(64, 10))


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "small CNN, batch 16×3×32×32": (small_cnn, (16, 3, 32, 32)),
    "8-layer BN MLP, batch 64×64": (bn_mlp, (64, 64)),
}


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def run() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return run


def paired(fn_a: Callable[[], None], fn_b: Callable[[], None], steps: int) -> tuple[float, ...]:
    """(p10 of A, p10 of B, median of B − A over adjacent pairs), interleaved A B B A …"""
    for _ in range(10):
        fn_a()
        fn_b()
    times_a: list[float] = []
    times_b: list[float] = []
    for i in range(steps):
        order = ((fn_a, times_a), (fn_b, times_b))
        for fn, sink in order if i % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - start)
    diffs = [b - a for a, b in zip(times_a, times_b, strict=True)]
    return p10(times_a), p10(times_b), statistics.median(diffs)


def p10(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[0]


def record_time(w: bnkit.diagnostics.Watch, repeats: int = 200) -> float:
    """Median time of one record (a step boundary's measurement) of an active watch."""
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        w._record(w.steps - 1)
        times.append(time.perf_counter() - start)
        del w.records[-len(w.layers) :]
        if i == 0:
            times.clear()
    return statistics.median(times)


CASES = {"control (nothing watched)": None, "hooks only": 10**9, "every=10": 10, "every=1": 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=150, help="interleaved steps per case")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, (build, shape) in MODELS.items():
        for case, every in CASES.items():
            torch.manual_seed(0)
            plain = build()
            other = copy.deepcopy(plain)
            x = torch.randn(shape)
            y = torch.randint(0, 10, (shape[0],))
            fn_a, fn_b = step_fn(plain, x, y), step_fn(other, x, y)
            record = float("nan")
            if every is None:
                a, b, diff = paired(fn_a, fn_b, args.steps)
            else:
                with bnkit.watch(other, every=every) as w:
                    a, b, diff = paired(fn_a, fn_b, args.steps)
                    record = record_time(w)
                assert w.steps == args.steps + 10
            rows.append((name, case, a, b, diff, record))
            print(
                f"{name:28s} {case:26s} plain {1e3 * a:7.3f} ms  other {1e3 * b:7.3f} ms  "
                f"median paired difference {1e3 * diff:+.3f} ms ({100 * diff / a:+.1f} %)  "
                f"one record {1e3 * record:.3f} ms",
                flush=True,
            )
    print(
        f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, {args.steps} interleaved steps, training step (fwd+bwd+SGD)\n"
    )
    print("| model | watch | plain p10 ms | watched p10 ms | median paired difference |")
    print("|---|---|---:|---:|---:|")
    for name, case, a, b, diff, _ in rows:
        print(
            f"| {name} | {case} | {1e3 * a:.3f} | {1e3 * b:.3f} | "
            f"{1e3 * diff:+.3f} ms ({100 * diff / a:+.1f} %) |"
        )
    print("\n| model | layers | one record (median) |")
    print("|---|---:|---:|")
    for name, case, *_, record in rows:
        if case == "every=1":
            layers = sum(
                isinstance(m, nn.modules.batchnorm._BatchNorm) for m in MODELS[name][0]().modules()
            )
            print(f"| {name} | {layers} | {1e3 * record:.3f} ms |")


if __name__ == "__main__":
    main()
