"""``bnkit.recalibrate`` on real models against a float64 oracle.

The oracle is a float64 copy of the model with every BatchNorm layer normalizing with its batch
statistics (train() without tracking, the rest of the model in eval()), whose layer inputs are
summed in float64 over all the data: the population mean and unbiased variance of what each
layer sees, which is what ``estimator="population"`` promises.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
import torch.nn as nn
from tests.integration.zoo import ZOO, Args, Zoo, bn_modules, built
from torch import Tensor

import bnkit

WITH_BN = [z for z in ZOO if z.name != "transformers/DETR"]
BATCHES = 3


def _data(zoo: Zoo, dtype: torch.dtype) -> list[Args]:
    gen = torch.Generator().manual_seed(7)
    # TabNet's ghost batches call each layer once per 8 samples: keep one ghost batch.
    size = 8 if zoo.name == "tabnet/TabNet" else 4
    out = []
    for _ in range(BATCHES):
        args, kwargs = zoo.inputs(gen, size)
        cast = tuple(a.to(dtype) if a.is_floating_point() else a for a in args)
        out.append((cast, {k: v.to(dtype) for k, v in kwargs.items()}))
    return out


def _feed(model: nn.Module, batch: Args) -> Any:
    args, kwargs = batch
    return model(*args, **kwargs)


def _oracle(zoo: Zoo, dtype: torch.dtype = torch.float64) -> dict[str, tuple[Tensor, Tensor]]:
    model = copy.deepcopy(built(zoo)).to(dtype).eval()
    for module in model.modules():  # TabNet keeps its group matrix as a plain attribute
        for key, value in list(vars(module).items()):
            if isinstance(value, Tensor) and value.is_floating_point():
                setattr(module, key, value.to(dtype))
    sums: dict[str, list[Tensor | int]] = {}

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: tuple[Tensor, ...]) -> None:
            x = args[0].detach().double()
            flat = x.transpose(0, 1).reshape(x.shape[1], -1)
            s = sums.setdefault(name, [0, 0, 0])
            s[0] = s[0] + flat.sum(1)
            s[1] = s[1] + flat.square().sum(1)
            s[2] = int(s[2]) + flat.shape[1]

        return record

    for name, layer in bn_modules(model):
        layer.train()
        layer.track_running_stats = False
        layer.register_forward_pre_hook(hook(name))
    with torch.no_grad():
        for batch in _data(zoo, dtype):
            _feed(model, batch)
    out = {}
    for name, (total, squares, n) in sums.items():
        assert isinstance(total, Tensor) and isinstance(squares, Tensor) and isinstance(n, int)
        mean = total / n
        out[name] = (mean, (squares - n * mean.square()) / (n - 1))
    return out


def _gap(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b).abs().max())


@pytest.mark.parametrize("zoo", WITH_BN, ids=str)
def test_recalibrate_matches_a_float64_oracle(zoo: Zoo) -> None:
    """As close to the float64 oracle as float32 arithmetic allows.

    Deep layers of random-init models have dead channels (variance ~1e-9, so normalization
    divides by sqrt(eps)), which amplify float32 rounding layer after layer: the float32
    oracle itself drifts from the float64 one there. bnkit must stay within a small factor of
    the largest drift so far (relative to each layer's scale), and within 1e-5 where there is
    none, so a wrong estimator (a biased variance, a batch-weighted mean) fails at once.
    """
    exact, single = _oracle(zoo, torch.float64), _oracle(zoo, torch.float32)
    assert exact, "the oracle saw no BatchNorm layer"
    plain = dict(bn_modules(built(zoo)))
    unreached = [n for n in plain if n not in exact]  # TabNet defines a layer it never runs
    model = copy.deepcopy(built(zoo)).eval()
    data = _data(zoo, torch.float32)
    if unreached:
        with pytest.raises(bnkit.errors.RecalibrationError, match=repr(unreached[0])):
            bnkit.recalibrate(model, data, forward=_feed, progress=False)
    bnkit.recalibrate(
        model, data, forward=_feed, progress=False, where=lambda n, _: n not in unreached
    )
    drift = 0.0
    for name, layer in bn_modules(model):
        assert layer.running_mean is not None and layer.running_var is not None
        if name in unreached:
            assert torch.equal(layer.running_mean, plain[name].running_mean), name
            continue
        assert int(layer.num_batches_tracked) == BATCHES, name
        (mean, var), (mean32, var32) = exact[name], single[name]
        scale = float(var.max())
        pairs = (
            (layer.running_mean, mean, mean32, scale**0.5),
            (layer.running_var, var, var32, scale),
        )
        drift = max(drift, *(_gap(floor, want) / unit for _, want, floor, unit in pairs))
        for ours, want, _, unit in pairs:
            assert _gap(ours, want) / unit <= 4 * drift + 1e-5, name
