"""Overhead of ``bnkit.watch`` on a training step (forward, backward, SGD step).

Two copies of the same model train side by side; one is watched for the whole run (the watch
is entered once, as in a real loop). Single steps of the two alternate (A B B A …) so both see
the same machine state, and the reported overhead is the ratio of the 10th-percentile step
times (see bench_forward.py for why the low quantile).

    python benchmarks/bench_watch.py [--steps 300] [--threads 2]
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
    "small CNN, batch 32×3×32×32": (small_cnn, (32, 3, 32, 32)),
    "8-layer BN MLP, batch 64×64": (bn_mlp, (64, 64)),
}


def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def run() -> None:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return run


def paired_times(
    fn_a: Callable[[], None], fn_b: Callable[[], None], steps: int
) -> tuple[float, float]:
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
    return p10(times_a), p10(times_b)


def p10(values: list[float]) -> float:
    return statistics.quantiles(values, n=10)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=300, help="interleaved steps per case")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name, (build, shape) in MODELS.items():
        for every in (1, 10):
            torch.manual_seed(0)
            plain = build()
            watched = copy.deepcopy(plain)
            x = torch.randn(shape)
            y = torch.randint(0, 10, (shape[0],))
            with bnkit.watch(watched, every=every) as w:
                t_plain, t_watched = paired_times(
                    step_fn(plain, x, y), step_fn(watched, x, y), args.steps
                )
            assert w.steps >= args.steps
            extra = t_watched - t_plain
            rows.append((name, every, t_plain, t_watched, extra))
            print(
                f"{name:28s} every={every:<3d} plain {1e3 * t_plain:7.3f} ms  "
                f"watched {1e3 * t_watched:7.3f} ms  overhead {1e3 * extra:+.3f} ms "
                f"({100 * extra / t_plain:+.1f} %)",
                flush=True,
            )
    print(
        f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{args.threads} threads, {args.steps} interleaved steps, training step (fwd+bwd+SGD)\n"
    )
    print("| model | every | plain p10 ms | watched p10 ms | overhead |")
    print("|---|---:|---:|---:|---:|")
    for name, every, a, b, extra in rows:
        print(
            f"| {name} | {every} | {1e3 * a:.3f} | {1e3 * b:.3f} | "
            f"{1e3 * extra:+.3f} ms ({100 * extra / a:+.1f} %) |"
        )


if __name__ == "__main__":
    main()
