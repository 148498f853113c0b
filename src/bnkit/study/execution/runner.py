"""Running a grid: identities, resume, pretraining, then the cells, on an executor.

1. Every setting, the output folder and the bench (data, model) are checked before any work.
2. The grid is enumerated; each cell gets its identity and key
   (:mod:`bnkit.study.execution.identity`); cells the store already holds are skipped.
3. Source models missing from the cache are trained (one task per model and seed).
4. The remaining cells run in tasks that share a seed and a target (so a process loads the
   images and the source model once for many cells); each is stored as it finishes.
5. The rows are read back from the store in grid order, so a study killed at any moment and
   started again ends with every row exactly once.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from bnkit.errors import StudyError
from bnkit.study.config.settings import StudyConfig
from bnkit.study.execution.bench import BenchSpec, UserSpec
from bnkit.study.execution.benches import make_bench
from bnkit.study.execution.cells import Cell
from bnkit.study.execution.compute import compute_cell
from bnkit.study.execution.grid import grid
from bnkit.study.execution.identity import cell_identity, cell_key, run_identity
from bnkit.study.execution.local import LocalExecutor, usable_cores
from bnkit.study.execution.store import CellStore

__all__ = ["check_out", "execute", "resolve_device"]

Job = tuple[Cell, str, dict[str, Any]]


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when a GPU is there, else ``"cpu"``; others are checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise StudyError(f"device must be auto, cpu or cuda (got {device!r})")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise StudyError("--device cuda was asked for, but torch sees no CUDA device; use cpu")
    return device


def check_out(out: Path) -> None:
    """Make sure ``out`` is a folder this process can write into (before any work)."""
    if out.exists() and not out.is_dir():
        raise StudyError(f"--out {str(out)!r} is a file, not a folder; name a folder")
    try:
        (out / "cells").mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out / "cells"):
            pass
    except OSError as err:
        raise StudyError(f"cannot write into --out {str(out)!r}: {err.strerror or err}") from None


def _cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _pretrain(args: tuple[BenchSpec, str, str, int]) -> dict[str, Any]:
    spec, dataset, norm, seed = args
    got = make_bench(spec).source_model(dataset, norm, seed)
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


def _run(args: tuple[BenchSpec, list[Job], str]) -> int:
    spec, jobs, folder = args
    bench, store = make_bench(spec), CellStore(folder)
    for cell, key, identity in jobs:
        store.write(cell.name, key, identity, compute_cell(bench, cell))
    return len(jobs)


def _tasks(jobs: list[Job]) -> list[list[Job]]:
    """Jobs grouped by what they load: (seed, protocol, target, k, lr)."""
    groups: dict[tuple[Any, ...], list[Job]] = {}
    for job in jobs:
        c = job[0]
        groups.setdefault((c.seed, c.protocol, c.shift, c.severity, c.k, c.lr), []).append(job)
    return list(groups.values())


def execute(
    config: StudyConfig,
    *,
    out: Path,
    workers: int | None,
    threads: int | None,
    device: str,
    cache: Path | None,
    user: UserSpec | None,
    progress: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run (or finish) the grid of ``config``; return its rows (grid order) and facts."""
    started, cpu0 = time.perf_counter(), _cpu_seconds()
    dev = resolve_device(device)
    nworkers = workers if workers is not None else (1 if dev != "cpu" else min(8, usable_cores()))
    if nworkers < 1:
        raise StudyError(f"workers must be at least 1 (got {nworkers})")
    if threads is not None and threads < 1:
        raise StudyError(f"threads must be at least 1 (got {threads})")
    check_out(out)
    spec = BenchSpec(config, str(cache or out / "cache"), dev, user, uuid.uuid4().hex)
    bench = make_bench(spec)
    cells = grid(bench)
    run_id = run_identity(dev, bench.image_size)
    models: dict[tuple[str, str, int], dict[str, Any]] = {}
    jobs: list[Job] = []
    for cell in cells:
        src = bench.source_of(cell.shift)
        mkey = (src, cell.model, cell.seed)
        if mkey not in models:
            models[mkey] = bench.model_context(*mkey)
        context = {"data": bench.data_identity(cell.shift), "model": models[mkey]}
        ident = cell_identity(cell, run_id, config.settings_for(cell.protocol), context)
        jobs.append((cell, cell_key(ident), ident))
    store = CellStore(out / "cells")
    cleaned = store.clean()
    done = {c.name for c, key, ident in jobs if store.read(c.name, key, ident) is not None}
    todo = [j for j in jobs if j[0].name not in done]
    trained: list[dict[str, Any]] = []
    with LocalExecutor(nworkers, threads or 1) as pool:
        needed = [(spec, d, n, s) for s in range(config.seeds) for d, n in bench.source_models()]
        with tqdm(
            total=len(needed), desc="bnkit study: source models", disable=not progress
        ) as bar:
            for info in pool.imap(_pretrain, needed):
                trained.append(info)
                bar.update(1)
        tasks = [(spec, group, str(out / "cells")) for group in _tasks(todo)]
        with tqdm(
            total=len(todo), desc="bnkit study: cells", unit="cell", disable=not progress
        ) as bar:
            for count in pool.imap(_run, tasks):
                bar.update(count)
    rows = []
    for cell, key, ident in jobs:
        row = store.read(cell.name, key, ident)
        if row is None:
            raise StudyError(f"cell {cell.name} did not finish; run the same command again")
        rows.append(row)
    meta = {
        **bench.describe(),
        "source_models": sorted(trained, key=lambda m: (m["source"], m["model"], m["seed"])),
        "device": dev,
        "workers": nworkers,
        "threads_per_worker": threads or 1,
        "torch": torch.__version__,
        "bnkit": run_id["bnkit"],
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {usable_cores()} usable cores",
        "cells": len(cells),
        "skipped": len(done),
        "ran": len(todo),
        "leftovers_removed": cleaned,
        "wall_s": time.perf_counter() - started,
        "cpu_s": _cpu_seconds() - cpu0,
    }
    return rows, meta
