"""``bnkit explain``: every number of one BatchNorm forward."""

from __future__ import annotations

import argparse
import json
from typing import Any

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from bnkit.apply import apply
from bnkit.errors import InputError
from bnkit.explain import explain

__all__ = ["register", "run"]


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "explain",
        help="show every number a BatchNorm layer computes",
        description=(
            "Explain one BatchNorm forward. --demo walks through why the output is not "
            "weight·x + bias; otherwise a layer with the given policy is explained on a "
            "random input of the given shape."
        ),
    )
    p.add_argument("--demo", action="store_true", help="the weight·x + bias walk-through")
    p.add_argument("--shape", default="4,2,3,3", help="input shape N,C[,…] (default 4,2,3,3)")
    p.add_argument("--policy", default="pytorch", help="policy preset name (default pytorch)")
    p.add_argument("--eval", action="store_true", help="explain the layer in eval()")
    p.add_argument("--seed", type=int, default=0, help="random seed for the input")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.demo:
        from bnkit.cli._demo import demo_text

        print(demo_text())
        return 0
    try:
        shape = tuple(int(s) for s in args.shape.split(","))
    except ValueError:
        raise InputError(f"--shape must be integers like 4,2,3,3 (got {args.shape!r})") from None
    if not 2 <= len(shape) <= 5:
        raise InputError(f"--shape needs 2 to 5 dims (got {len(shape)})")
    layer_cls: dict[int, type[_BatchNorm]] = {
        2: nn.BatchNorm1d,
        3: nn.BatchNorm1d,
        4: nn.BatchNorm2d,
        5: nn.BatchNorm3d,
    }
    gen = torch.Generator().manual_seed(args.seed)
    layer = layer_cls[len(shape)](shape[1])
    c = shape[1]
    with torch.no_grad():
        for tensor, value in (
            (layer.weight, torch.rand(c, generator=gen) + 0.5),
            (layer.bias, torch.randn(c, generator=gen) * 0.1),
            (layer.running_mean, torch.randn(c, generator=gen) * 0.5),
            (layer.running_var, torch.rand(c, generator=gen) + 0.5),
        ):
            assert isinstance(tensor, torch.Tensor)
            tensor.copy_(value)
    apply(layer, args.policy)
    layer.train(not args.eval)
    x = torch.randn(*shape, generator=gen) * 2 + 1
    e = explain(layer, x, name="bn")
    print(json.dumps(e.to_dict(), indent=2) if args.json else e)
    return 0
