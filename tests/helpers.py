"""Test helpers: BatchNorm twins with random state, and an independent decision table."""

from __future__ import annotations

import copy
import datetime
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

import bnkit
from bnkit.policy import Affine, Normalize, Phase, Policy, Update

BN_FOR_DIM: dict[int, type[_BatchNorm]] = {
    2: nn.BatchNorm1d,
    3: nn.BatchNorm1d,
    4: nn.BatchNorm2d,
    5: nn.BatchNorm3d,
}


def randomize(layer: _BatchNorm, seed: int = 0) -> _BatchNorm:
    """Give a layer non-trivial gamma, beta and running statistics."""
    g = torch.Generator().manual_seed(seed)
    c = layer.num_features
    with torch.no_grad():
        if layer.weight is not None:
            layer.weight.copy_(torch.rand(c, generator=g) + 0.5)
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(c, generator=g) * 0.3)
        if layer.running_mean is not None and layer.running_var is not None:
            layer.running_mean.copy_(torch.randn(c, generator=g))
            layer.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            assert layer.num_batches_tracked is not None
            layer.num_batches_tracked.fill_(3)
    return layer


def make_layer(dim: int, c: int, dtype: torch.dtype = torch.float32, **kw: object) -> _BatchNorm:
    return randomize(BN_FOR_DIM[dim](c, dtype=dtype, **kw))  # type: ignore[arg-type]


def uses_batch(policy: Policy, training: bool) -> bool | None:
    """Batch (True) or running (False) statistics, read off the axes independently of bnkit's
    helpers; None for the strategies PyTorch has no kernel for."""
    mode = policy.normalize
    if mode is Normalize.PHASE:
        return training
    if mode in (Normalize.RENORM, Normalize.GHOST):
        return None if training else False
    if mode is Normalize.PRIOR:
        return None
    return mode is Normalize.BATCH


def updates(policy: Policy, training: bool) -> bool:
    if policy.update is Update.NEVER:
        return False
    return policy.update_in is Phase.ALWAYS or (policy.update_in is Phase.TRAIN) == training


def native_twin(layer: _BatchNorm, policy: Policy, training: bool) -> _BatchNorm | None:
    """A plain nn.BatchNorm that behaves like ``policy`` in this phase, or None if none can."""
    batch, upd = uses_batch(policy, training), updates(policy, training)
    if batch is None or (not batch and upd):
        return None
    twin = copy.deepcopy(layer)
    if batch and upd:
        twin.train()
        twin.track_running_stats = True
        own = layer.momentum if policy.momentum is None else policy.momentum  # None: the layer's
        twin.momentum = None if policy.update is Update.CUMULATIVE else own
    elif batch:
        twin.train()
        twin.track_running_stats = False
    else:
        twin.eval()
    frozen = policy.affine is Affine.FROZEN
    for p in (twin.weight, twin.bias):
        if p is not None:
            p.requires_grad_(not frozen)
    return twin


def step(layer: nn.Module, x: Tensor, grad_seed: int = 1) -> dict[str, Tensor | None]:
    """Forward and backward once; return output, grads and state."""
    xg = x.detach().clone().requires_grad_(True)
    y = layer(xg)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=y.dtype)
    y.backward(g.to(memory_format=torch.contiguous_format))
    out: dict[str, Tensor | None] = {"y": y.detach(), "dx": xg.grad}
    for name in ("weight", "bias"):
        p = getattr(layer, name, None)
        out[f"d{name}"] = None if p is None else p.grad
        if p is not None:
            p.grad = None
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        b = getattr(layer, name, None)
        out[name] = None if b is None else b.detach().clone()
    return out


def assert_bitwise(a: dict[str, Tensor | None], b: dict[str, Tensor | None]) -> None:
    for key in a:
        va, vb = a[key], b[key]
        if va is None or vb is None:
            assert va is None and vb is None, f"{key}: {va} vs {vb}"
            continue
        assert va.dtype == vb.dtype, key
        assert torch.equal(va, vb), f"{key} differs: max {(va.double() - vb.double()).abs().max()}"


def managed_copy(layer: _BatchNorm, policy: Policy | str) -> _BatchNorm:
    twin = copy.deepcopy(layer)
    return bnkit.apply(twin, policy)


def outcome(fn: Callable[[], object]) -> tuple[str, float]:
    """``("ok" or "ErrorType: message", seconds)`` of calling ``fn``: what a rank reports back."""
    start = time.monotonic()
    try:
        fn()
    except Exception as err:  # the outcome is what the test reads
        return f"{type(err).__name__}: {err}", time.monotonic() - start
    return "ok", time.monotonic() - start


def join_gloo(rank: int, init: str) -> None:
    """One thread, and this process as ``rank`` of a 2-process gloo group at ``init``."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=init, rank=rank, world_size=2, timeout=datetime.timedelta(seconds=60)
    )


def two_ranks(worker: Callable[[int, str, str], None], tmp: Path) -> list[dict[str, Any]]:
    """Run ``worker(rank, init, out)`` in 2 processes; what each saved as ``out/rank<r>.pt``."""
    mp.spawn(worker, args=(f"file://{tmp / 'store'}", str(tmp)), nprocs=2, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(2)]
