"""Hand-made result rows for the rule, selection and advice tests: every arm on every target."""

from __future__ import annotations

import itertools
from typing import Any

from bnkit.study.results.results import Results

SEEDS = 5
TARGETS = [
    ("none", 0, "none", "digits"),
    ("contrast", 5, "photometric", "digits"),
    ("gaussian_noise", 5, "noise", "digits"),
    ("rotation", 5, "spatial", "digits"),
    ("mnist_to_digits", 0, "real", "mnist"),
]
BASE = {"none": 0.99}
SHIFTED = 0.3
"""Accuracy of every arm before a test changes one: 99% unshifted, 30% on every shift (so every
shift hurts the source model, which is 99% on held-out source images)."""


def row(protocol: str, model: str, strategy: str, target: tuple[Any, ...], seed: int,
        **kw: Any) -> dict[str, Any]:  # fmt: skip
    shift, sev, family, source = target
    acc = BASE.get(shift, SHIFTED)
    out = {
        "protocol": protocol, "model": model, "strategy": strategy, "shift": shift,
        "family": family, "source": source, "severity": sev, "stream": "iid", "batch_size": 0,
        "n": 0, "k": 0, "lr": 0.0, "seed": seed, "accuracy": acc, "val_accuracy": acc,
        "ece": 0.1, "nonfinite": 0.0, "curve": [acc, acc], "wall_s": 0.1, "images_per_s": 1.0,
    }  # fmt: skip
    out.update(kw)
    return out


def universe(seeds: int = SEEDS) -> list[dict[str, Any]]:
    rows = []
    for seed, t in itertools.product(range(seeds), TARGETS):
        rows += [
            row("test_time", "bn", "source", t, seed),
            row("test_time", "gn", "source", t, seed),
        ]
        rows += [row("test_time", "bn", "adabn", t, seed, n=n) for n in (0, 16)]
        for name, bs, stream in itertools.product(
            ("test_batch", "prior", "adapt"), (1, 4, 64), ("iid", "sorted", "dirichlet")
        ):
            rows.append(row("test_time", "bn", name, t, seed, batch_size=bs, stream=stream))
        for stream in ("iid", "sorted", "dirichlet"):
            rows.append(row("test_time", "bn", "tent", t, seed, batch_size=64, stream=stream))
        if t[0] == "contrast":
            rows += [row("test_time", "bn", s, t, seed, batch_size=64)
                     for s in ("tent_long", "tent_reset")]  # fmt: skip
        if t[0] in ("none", "contrast"):
            for name, bs in itertools.product(
                ("pytorch", "frozen_stats", "adabn_finetune"), (2, 16)
            ):
                rows.append(row("finetune", "bn", name, t, seed, batch_size=bs, k=10, lr=1e-3))
    rows += [row("bn_only", "bn", "scratch", ("source", 0, "none", "digits"), s)
             for s in range(seeds)]  # fmt: skip
    return rows


def results(rows: list[dict[str, Any]], seeds: int = SEEDS, held_out: float = 0.99) -> Results:
    config = {
        "seeds": seeds,
        "severities": [5],
        "test_time": {
            "batch_sizes": [1, 4, 64], "streams": ["iid", "sorted", "dirichlet"],
            "tent_batch_size": 64, "stress_shifts": ["contrast"], "stress_images": 4096,
            "prior_strength": 16.0, "adapt_momentum": 0.01,
        },
        "finetune": {"batch_sizes": [2, 16], "strategies": ["pytorch", "frozen_stats",
                     "adabn_finetune"], "lrs": [1e-3], "steps": 200},
        "verdicts": {"level": 0.95, "big": 0.05, "non_inferiority": 0.01, "hurt": 0.05,
                     "chance_margin": 0.05},
    }  # fmt: skip
    models = [
        {"source": src, "model": "bn", "seed": s, "val_accuracy": held_out, "steps": 100,
         "converged": True}
        for src in ("digits", "mnist") for s in range(seeds)
    ]  # fmt: skip
    return Results(rows, config, {"classes": 10, "source_models": models})


def matches(r: Results, where: dict[str, Any]) -> list[dict[str, Any]]:
    return r.select(**where)
