"""Running a grid: identities, resume, pretraining, then the cells, on an executor.

1. Every setting, the output folder and the bench (data, model) are checked before any work.
2. The grid is enumerated; each cell gets its identity and key
   (:mod:`bnkit.study.execution.identity`). Cells are grouped into tasks that share a seed and
   a target (so a process loads the images and the source model once for many cells); with
   ``--shard I/N`` only part I of the tasks is this run's (:mod:`bnkit.study.execution.parts`).
3. The store's index is read once; cells it already holds are skipped.
4. Source models are trained where missing (one task per model and seed), then the remaining
   cells run, on the local pool (:mod:`bnkit.study.execution.local`) or on Ray
   (:mod:`bnkit.study.execution.ray_executor`); each row is stored as it finishes.
5. The rows are read back from the index in grid order, so a study killed at any moment and
   started again ends with every row exactly once; ``part.json`` records what was run.
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
from bnkit.study.execution.bench import Bench, BenchSpec, UserSpec
from bnkit.study.execution.benches import make_bench
from bnkit.study.execution.devices import assign, default_workers
from bnkit.study.execution.grid import grid
from bnkit.study.execution.identity import cell_identity, cell_key, run_identity
from bnkit.study.execution.local import LocalExecutor, usable_cores
from bnkit.study.execution.parts import select, write_part
from bnkit.study.execution.ray_executor import run_on_ray
from bnkit.study.execution.store import CellStore, digest
from bnkit.study.execution.tasks import Job, ModelKey, group, model_of, pretrain, run_and_store

__all__ = ["EXECUTORS", "check_out", "execute", "resolve_device"]

EXECUTORS = ("local", "ray")


def resolve_device(device: str, here: bool = True) -> str:
    """``"auto"`` → ``"cuda"`` when a GPU is there, else ``"cpu"``; others are checked (a GPU
    must be on this machine only when the cells run ``here``, not on a Ray cluster)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise StudyError(f"device must be auto, cpu or cuda (got {device!r})")
    if device.startswith("cuda:") and not here:
        raise StudyError("with --executor ray, Ray gives each task its GPU: use --device cuda")
    if here and device.startswith("cuda") and not torch.cuda.is_available():
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


def _jobs(bench: Bench, run_id: dict[str, Any]) -> tuple[list[Job], dict[str, Any]]:
    """Every cell of the grid with its key and identity, and the fingerprint of the run."""
    models: dict[tuple[str, str, int], dict[str, Any]] = {}
    data: dict[str, Any] = {}
    jobs: list[Job] = []
    for cell in grid(bench):
        src = bench.source_of(cell.shift)
        mkey = (src, cell.model, cell.seed)
        if mkey not in models:
            models[mkey] = bench.model_context(*mkey)
        data.setdefault(cell.shift, bench.data_identity(cell.shift))
        context = {"data": data[cell.shift], "model": models[mkey]}
        ident = cell_identity(cell, run_id, bench.config.settings_for(cell.protocol), context)
        jobs.append((cell, cell_key(ident), ident))
    fingerprint = {
        "bench": bench.name,
        "settings": bench.config.to_dict(),
        "run": run_id,
        "data": data,
        "models": {"/".join(map(str, k)): v for k, v in sorted(models.items())},
    }
    return jobs, fingerprint


def _bar(total: int, desc: str, progress: bool, unit: str = "it") -> tqdm[Any]:
    return tqdm(total=total, desc=f"bnkit study: {desc}", unit=unit, disable=not progress)


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
    executor: str = "local",
    address: str | None = None,
    shard: tuple[int, int] = (0, 1),
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run (or finish) the grid of ``config`` (or part ``shard`` of it) on ``executor``;
    return its rows (grid order) and facts."""
    started, cpu0 = time.perf_counter(), _cpu_seconds()
    if executor not in EXECUTORS:
        raise StudyError(f"executor must be one of {', '.join(EXECUTORS)} (got {executor!r})")
    if address is not None and executor != "ray":
        raise StudyError("--address names a Ray cluster; use it with --executor ray")
    dev = resolve_device(device, here=executor == "local")
    gpus = torch.cuda.device_count() if dev.startswith("cuda") and executor == "local" else 0
    if workers is not None:
        nworkers = workers
    elif executor == "local":
        nworkers = default_workers(dev, gpus, usable_cores())
    else:  # the CPUs of a local Ray instance
        nworkers = usable_cores()
    if nworkers < 1:
        raise StudyError(f"workers must be at least 1 (got {nworkers})")
    if threads is not None and threads < 1:
        raise StudyError(f"threads must be at least 1 (got {threads})")
    devices = assign(dev, gpus, nworkers) if executor == "local" else [dev]
    check_out(out)
    here = devices[0] if executor == "local" and nworkers == 1 else dev
    bench = make_bench(BenchSpec(config, str(cache or out / "cache"), here, user, uuid.uuid4().hex))
    spec = bench.spec  # with the normalization computed on the user's source images
    run_id = run_identity(dev, bench.image_size)
    jobs, fingerprint = _jobs(bench, run_id)
    position = {job[0]: i for i, job in enumerate(jobs)}
    mine = sorted(
        (j for task in select(group(jobs), shard) for j in task), key=lambda j: position[j[0]]
    )
    store = CellStore(out / "cells")
    cleaned = store.clean()
    facts = store.load()
    todo = [j for j in mine if store.read(j[0].name, j[1], j[2]) is None]
    models = sorted({m for j in mine if (m := model_of(spec, j[0])) is not None})
    trained: list[dict[str, Any]] = []
    tasks = group(todo)
    nthreads = threads or 1
    if executor == "local":
        with LocalExecutor(devices, nthreads) as pool:
            with _bar(len(models), "source models", progress) as bar:
                for info in pool.imap(pretrain, [(spec, m) for m in models]):
                    trained.append(info)
                    bar.update(1)
            folder = str(store.folder)
            with _bar(len(todo), "cells", progress, "cell") as bar:
                for count in pool.imap(run_and_store, [(spec, t, folder) for t in tasks]):
                    bar.update(count)
    else:
        trained = _on_ray(bench, spec, models, tasks, store, address, nworkers, nthreads, progress)
    store.load()
    rows = []
    for cell, key, ident in mine:
        row = store.read(cell.name, key, ident)
        if row is None:
            raise StudyError(f"cell {cell.name} did not finish; run the same command again")
        rows.append(row)
    cells = [(position[c], c.name, k, digest(i)) for c, k, i in mine]
    write_part(out, fingerprint, shard, len(jobs), cells)
    meta = {
        "config": spec.config.to_dict(),
        **bench.describe(),
        "source_models": sorted(trained, key=lambda m: (m["source"], m["model"], m["seed"])),
        "device": dev,
        "executor": executor,
        "workers": nworkers,
        "devices": devices if executor == "local" else [],
        "threads_per_worker": nthreads,
        "shard": list(shard),
        "feed": {
            "loader_workers": bench.feed.workers,
            "mixed_precision": bench.feed.mixed_precision,
            "channels_last": bench.feed.channels_last,
        },
        "normalization": {"mean": list(spec.config.data.mean), "std": list(spec.config.data.std)}
        if user is not None
        else None,
        "store": facts,
        "torch": torch.__version__,
        "bnkit": run_id["bnkit"],
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {usable_cores()} usable cores",
        "cells": len(mine),
        "grid_cells": len(jobs),
        "skipped": len(mine) - len(todo),
        "ran": len(todo),
        "leftovers_removed": cleaned,
        "wall_s": time.perf_counter() - started,
        "cpu_s": _cpu_seconds() - cpu0,
    }
    return rows, meta


def _on_ray(
    bench: Bench,
    spec: BenchSpec,
    models: list[ModelKey],
    tasks: list[list[Job]],
    store: CellStore,
    address: str | None,
    cpus: int,
    threads: int,
    progress: bool,
) -> list[dict[str, Any]]:
    """Run the study's tasks on Ray; facts about the source models."""
    paths = {m: bench.source_path(*m) for m in models}
    used = [(t, sorted({m for j in t if (m := model_of(spec, j[0])) is not None})) for t in tasks]
    trained: list[dict[str, Any]] = []
    with (
        _bar(len(models), "source models", progress) as mbar,
        _bar(sum(len(t) for t in tasks), "cells", progress, "cell") as cbar,
    ):

        def on_model(info: dict[str, Any]) -> None:
            trained.append(info)
            mbar.update(1)

        run_on_ray(
            spec,
            models,
            [(t, [m for m in u if paths[m] is not None]) for t, u in used],
            store=store,
            paths=paths,
            address=address,
            cpus=cpus,
            gpu=spec.device.startswith("cuda"),
            threads=threads,
            on_model=on_model,
            on_cells=cbar.update,
        )
    return trained
