"""The units of work every executor runs: pretraining a source model, computing a group of cells.

These functions run in whatever process an executor picks (this one, a pool worker, a Ray
worker on another machine); they take plain, picklable arguments and rebuild the bench from its
spec (once per process). A pool worker writes its rows into the store itself
(:func:`run_and_store`); a Ray task returns them to the driver, which writes them
(:func:`compute_rows`), so results land where the driver collects them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnkit.study.execution.bench import BenchSpec
from bnkit.study.execution.benches import make_bench
from bnkit.study.execution.cells import Cell
from bnkit.study.execution.compute import compute_cell
from bnkit.study.execution.devices import here
from bnkit.study.execution.store import CellStore

__all__ = [
    "Job",
    "ModelKey",
    "cached_info",
    "compute_rows",
    "group",
    "model_of",
    "pretrain",
    "pretrain_payload",
    "run_and_store",
]

Job = tuple[Cell, str, dict[str, Any]]
"""A cell with its key and identity."""
ModelKey = tuple[str, str, int]
"""A source model: (data set, norm, seed)."""


def model_of(spec: BenchSpec, cell: Cell) -> ModelKey | None:
    """The source model a cell starts from (None: the BN-only check trains its own)."""
    if cell.protocol == "bn_only":
        return None
    return (make_bench(spec).source_of(cell.shift), cell.model, cell.seed)


def group(jobs: list[Job]) -> list[list[Job]]:
    """Jobs grouped by what they load: (seed, protocol, target, k, lr), in grid order."""
    groups: dict[tuple[Any, ...], list[Job]] = {}
    for job in jobs:
        c = job[0]
        groups.setdefault((c.seed, c.protocol, c.shift, c.severity, c.k, c.lr), []).append(job)
    return list(groups.values())


def _info(spec: BenchSpec, model: ModelKey) -> dict[str, Any]:
    dataset, norm, seed = model
    got = make_bench(here(spec)).source_model(dataset, norm, seed)
    return {
        "source": dataset,
        "model": norm,
        "seed": seed,
        "val_accuracy": got.val_accuracy,
        "train_s": got.train_seconds,
        "cache_hit": got.cache_hit,
        "path": str(got.path),
        "steps": got.steps,
        "converged": got.converged,
    }


def cached_info(model: ModelKey, path: Path) -> dict[str, Any]:
    """Facts about a source model read from its cache file (no model is built)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    return {
        "source": model[0],
        "model": model[1],
        "seed": model[2],
        "val_accuracy": float(state["val_accuracy"]),
        "train_s": 0.0,
        "cache_hit": True,
        "path": str(path),
        "steps": int(state["steps"]),
        "converged": bool(state["converged"]),
    }


def pretrain(args: tuple[BenchSpec, ModelKey]) -> dict[str, Any]:
    """Make sure a source model is in the cache (train it if needed); facts about it."""
    return _info(*args)


def pretrain_payload(spec: BenchSpec, model: ModelKey) -> tuple[dict[str, Any], bytes]:
    """Facts about a source model and its cache file's bytes, to hand to the cells using it."""
    info = _info(spec, model)
    return info, Path(info["path"]).read_bytes()


def run_and_store(args: tuple[BenchSpec, list[Job], str]) -> int:
    """Compute a group of cells and write each into the store as it finishes."""
    spec, jobs, folder = args
    bench, store = make_bench(here(spec)), CellStore(folder)
    for cell, key, identity in jobs:
        store.write(cell.name, key, identity, compute_cell(bench, cell))
    return len(jobs)


def compute_rows(
    spec: BenchSpec, jobs: list[Job], models: dict[ModelKey, bytes]
) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    """Compute a group of cells from the given source models (cache-file bytes); return
    (name, key, identity, row) of each."""
    bench = make_bench(here(spec))
    for (dataset, norm, seed), payload in models.items():
        bench.adopt(dataset, norm, seed, payload)
    return [(c.name, key, ident, compute_cell(bench, c)) for c, key, ident in jobs]
