"""One training step (forward, backward, SGD step) of real models with every BatchNorm managed,
against the untouched model: what a policy costs on a whole step, eager and compiled.

timm's resnet18 and efficientnet_b0 (its BatchNormAct2d layers go through bnkit's declared
adapter), built offline with random weights, at 224x224, batch 16. For each policy
(``pytorch``, ``frozen_stats``, ``adapt``) the managed and the untouched model take steps in
alternating order (A B B A ...) on the same batch; the table gives the 10th-percentile step
times and their ratio. ``--compile`` compiles both (inductor) and times them the same way after
warm-up.

    python benchmarks/bench_training_step.py [--models resnet18,efficientnet_b0] [--steps 30]
        [--batch 16] [--size 224] [--compile]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn

import bnkit
from bench_forward import paired_times

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.torchvision_shim import install

install()
import timm  # noqa: E402

POLICIES = ("pytorch", "frozen_stats", "adapt")


def stepper(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18,efficientnet_b0")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g)
    y = torch.randint(0, 1000, (args.batch,), generator=g)
    rows = []
    for name in args.models.split(","):
        torch.manual_seed(0)
        base = timm.create_model(name, pretrained=False).train()
        for policy in POLICIES:
            plain = copy.deepcopy(base)
            managed = bnkit.apply(copy.deepcopy(base), policy)
            run_a, run_b = plain, managed
            if args.compile:
                run_a, run_b = torch.compile(plain), torch.compile(managed)
            t_plain, t_ours = paired_times(stepper(run_a, x, y), stepper(run_b, x, y), args.steps)
            rows.append((name, policy, t_plain, t_ours))
            print(f"{name:16s} {policy:13s} ratio {t_ours / t_plain:.3f}", flush=True)
    mode = "compiled (inductor)" if args.compile else "eager"
    print(
        f"\n{platform.machine()}, torch {torch.__version__}, timm {timm.__version__}, "
        f"{torch.get_num_threads()} threads, {mode}, batch {args.batch}, {args.size}x{args.size}, "
        f"{args.steps} interleaved steps each\n"
    )
    print("| model | policy | untouched p10 s | managed p10 s | ratio | goal |")
    print("|---|---|---:|---:|---:|---:|")
    for name, policy, a, b in rows:
        print(f"| {name} | {policy} | {a:.3f} | {b:.3f} | {b / a:.3f} | ≤ 1.02 |")
    ratios = [b / a for *_, a, b in rows]
    print(f"\nmedian ratio {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
