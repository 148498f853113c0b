"""Where ``domain_shift``'s default threshold and minimum batch come from.

A small CNN is trained on a synthetic 4-class image task and put in eval(). Per BatchNorm
layer, the distance between a batch's statistics and the running statistics is the mean over
channels of the symmetric KL divergence that ``bnkit.check`` uses.

1. Noise floor: batches of the training distribution, the largest distance over 10 batches,
   per batch size. Below ``DOMAIN_MIN_SAMPLES`` samples noise alone reaches the threshold.
2. Shifts: brighter, higher-contrast and noisier data at several strengths; accuracy with the
   running statistics, accuracy after re-estimating them on 512 shifted samples (what
   ``bnkit.recalibrate`` does), and the smallest distance over 10 batches of 32.

    python benchmarks/domain_shift_threshold.py [--seeds 10] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F
from bnkit.diagnostics._probe import run_probe

from bnkit.diagnostics._rules_input import DOMAIN_MIN_SAMPLES, DOMAIN_THRESHOLD, jeffreys

SHIFTS = [
    ("brightness +", (0.5, 1.0, 2.0, 3.0)),
    ("contrast ×", (1.5, 2.0, 3.0)),
    ("noise σ=", (0.5, 1.0, 1.5, 2.5)),
]


def data(
    n: int, gen: torch.Generator, shift: str = "", strength: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images (σ=0.5) with a bright class-dependent stripe in a class-dependent channel."""
    y = torch.randint(0, 4, (n,), generator=gen)
    x = torch.randn(n, 3, 16, 16, generator=gen) * 0.5
    for c in range(4):
        x[y == c, c % 3, c * 4 : c * 4 + 4, :] += 2.0
    if shift.startswith("brightness"):
        x = x + strength
    elif shift.startswith("contrast"):
        x = x * strength
    elif shift.startswith("noise"):
        x = x + torch.randn(x.shape, generator=gen) * strength
    return x, y


def model() -> nn.Sequential:
    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(
        *block(3, 16),
        *block(16, 32),
        nn.MaxPool2d(2),
        *block(32, 32),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 4),
    )


def distances(net: nn.Module, x: torch.Tensor) -> dict[str, float]:
    probe = run_probe(net, x)
    out = {}
    for name, calls in probe.calls.items():
        c = calls[0]
        assert c.mean is not None
        assert c.var is not None
        assert c.running_mean is not None
        assert c.running_var is not None
        eps = float(getattr(net.get_submodule(name), "eps", 1e-5))
        out[name] = float(jeffreys(c.mean, c.var, c.running_mean, c.running_var, eps).mean())
    return out


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).float().mean())


def recalibrated(net: nn.Module, x: torch.Tensor) -> nn.Module:
    """A copy whose running statistics are re-estimated on ``x`` (cumulative average)."""
    twin = copy.deepcopy(net).train()
    for m in twin.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        twin(x)
    return twin.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    net = model()
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        x, y = data(64, gen)
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    names = [n for n, m in net.named_modules() if isinstance(m, nn.BatchNorm2d)]
    layers = " | ".join(f"layer {n}" for n in names)
    rule = "---:|" * len(names)
    print(
        f"default threshold {DOMAIN_THRESHOLD}, minimum batch {DOMAIN_MIN_SAMPLES} samples; "
        f"layers {', '.join(names)} (input side first)\n"
    )
    print(f"| training data, batch | {layers} | flagged |\n|---:|{rule}---|")
    for n in (8, 16, 32, 128):
        seen = [
            distances(net, data(n, torch.Generator().manual_seed(1000 + s))[0])
            for s in range(args.seeds)
        ]
        worst = [max(d[name] for d in seen) for name in names]
        flagged = (
            "(too few samples)"
            if n < DOMAIN_MIN_SAMPLES
            else "yes"
            if max(worst) > DOMAIN_THRESHOLD
            else "no"
        )
        print(f"| {n} | " + " | ".join(f"{v:.3f}" for v in worst) + f" | {flagged} |")
    print(f"\n| shift | accuracy | recalibrated | {layers} | flagged |\n|---|---:|---:|{rule}---|")
    for shift, strengths in SHIFTS:
        for k in strengths:
            x, y = data(2000, torch.Generator().manual_seed(5), shift, k)
            calib = data(512, torch.Generator().manual_seed(9), shift, k)[0]
            seen = [
                distances(net, data(32, torch.Generator().manual_seed(2000 + s), shift, k)[0])
                for s in range(args.seeds)
            ]
            least = [min(d[name] for d in seen) for name in names]
            flagged = "yes" if max(least) > DOMAIN_THRESHOLD else "no"
            print(
                f"| {shift}{k:g} | {accuracy(net, x, y):.3f} | "
                f"{accuracy(recalibrated(net, calib), x, y):.3f} | "
                + " | ".join(f"{v:.2f}" for v in least)
                + f" | {flagged} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
