"""Synchronized batch statistics with 2 gloo processes equal one process on the whole batch."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn

import bnkit

pytestmark = pytest.mark.distributed

SIZES = (3, 5)  # unequal per-rank batches
CASES = {
    "pytorch": bnkit.preset("pytorch"),
    "renorm": bnkit.preset("renorm", r_max=1.5, d_max=0.5),
    "prior": bnkit.preset("prior", prior_strength=4.0, update="ema"),
}


def build(policy: bnkit.Policy | None) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.SyncBatchNorm(4), nn.ReLU(),
    )  # fmt: skip
    with torch.no_grad():
        for m in (model[1], model[4]):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    if policy is not None:
        bnkit.apply(model, policy)
    return model.train()


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    n = sum(SIZES)
    return torch.randn(n, 3, 5, 5, generator=g) * 2 + 1, torch.randn(n, 4, 5, 5, generator=g)


def run(model: nn.Module, x: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = model(x)
    (out * g).sum().backward()
    result = {"out": out.detach(), "dx": x.grad.detach()}  # type: ignore[union-attr]
    for name, p in model.named_parameters():
        result[f"grad.{name}"] = p.grad.detach()  # type: ignore[union-attr]
    for name, b in model.named_buffers():
        result[name] = b.detach().clone()
    return result


def worker(rank: int, store: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        x, g = data()
        start = sum(SIZES[:rank])
        rows = slice(start, start + SIZES[rank])
        results = {}
        for name, policy in CASES.items():
            model = bnkit.synchronize(build(policy), where=nn.BatchNorm2d)
            results[name] = run(model, x[rows], g[rows])
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, dict[str, torch.Tensor]]]:
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(worker, args=(str(tmp / "store"), str(tmp)), nprocs=2, join=True)
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("name", list(CASES))
def test_synchronized_equals_one_process_on_the_concatenated_batch(
    ranks: list[dict[str, dict[str, torch.Tensor]]], name: str
) -> None:
    x, g = data()
    single = run(build(CASES[name]), x, g)
    r0, r1 = ranks[0][name], ranks[1][name]
    tol = {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(torch.cat([r0["out"], r1["out"]]), single["out"], **tol)
    torch.testing.assert_close(torch.cat([r0["dx"], r1["dx"]]), single["dx"], **tol)
    for key, value in single.items():
        if key.startswith("grad."):  # DDP would sum (or average) these across ranks
            # a conv bias right before BN has a zero gradient: only rounding noise is left
            torch.testing.assert_close(r0[key] + r1[key], value, rtol=1e-4, atol=1e-4)
        elif key not in ("out", "dx"):  # running statistics: identical everywhere
            torch.testing.assert_close(r0[key], value, **tol)
            assert torch.equal(r0[key], r1[key]), key


def test_not_synchronized_without_a_process_group() -> None:
    x, _ = data()
    plain = build(None)
    synced = bnkit.synchronize(copy.deepcopy(plain))
    assert bnkit.distributed.is_synchronized(synced[1])
    assert torch.equal(synced(x), plain(x))
    bnkit.desynchronize(synced)
    assert not bnkit.distributed.is_synchronized(synced[1])


@pytest.mark.slow
def test_torchrun_example_runs(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            str(root / "examples" / "ddp_synchronize.py"), "--steps", "3",
        ],
        capture_output=True, text=True, check=False, timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "running statistics identical on all ranks: True" in done.stdout
