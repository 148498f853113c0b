"""Running a study: pretraining, then the cells, over worker processes, resumable.

1. The grid is enumerated; cells with a finished file in ``OUT/cells`` are skipped.
2. Source models missing from the cache are trained (one task per model and seed).
3. The remaining cells run in tasks that share a seed and a target (so a process loads the
   shifted images and the source model once for many cells); each cell is written to disk as it
   finishes.
4. ``results.json`` / ``results.csv`` are rebuilt from the cell files of the grid, so a study
   killed at any moment and started again ends with every row exactly once.

With ``workers > 1`` the tasks go to a pool of spawned processes, each using ``threads`` torch
threads; with one worker they run in this process.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from bnkit.errors import StudyError
from bnkit.study.bench import Bench, BenchSpec, UserSpec, make_bench
from bnkit.study.cells import Cell, load_finished
from bnkit.study.config import StudyConfig
from bnkit.study.execute import pretrain_task, run_cells
from bnkit.study.grid import grid
from bnkit.study.results import Results

__all__ = ["default_workers", "resolve_device", "run", "usable_cores"]

_PR_SET_PDEATHSIG = 1


def _cpu_seconds() -> float:
    """CPU time of this process and its finished child processes (the workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when a GPU is there, else ``"cpu"``; others are checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise StudyError("--device cuda was asked for, but torch sees no CUDA device; use cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise StudyError(f"device must be auto, cpu or cuda (got {device!r})")
    return device


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers(device: str) -> int:
    """One process per usable core on CPU (at most 8); one on a GPU."""
    return 1 if device.startswith("cuda") else max(1, min(8, usable_cores()))


def _tasks(cells: list[Cell]) -> list[list[Cell]]:
    """Cells grouped by what they load: (seed, protocol, target, k, lr)."""
    groups: dict[tuple[Any, ...], list[Cell]] = {}
    for cell in cells:
        key = (cell.seed, cell.protocol, cell.shift, cell.severity, cell.k, cell.lr)
        groups.setdefault(key, []).append(cell)
    return list(groups.values())


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    _die_with_parent()


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this worker when the study's process dies (even by
    SIGKILL), so an interrupted study leaves no workers behind."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _call_pretrain(args: tuple[BenchSpec, str, int]) -> dict[str, Any]:
    return pretrain_task(*args)


def _call_cells(args: tuple[BenchSpec, list[Cell], str]) -> int:
    run_cells(*args)
    return len(args[1])


@contextlib.contextmanager
def _executor(workers: int, threads: int) -> Iterator[Callable[..., Iterator[Any]]]:
    """``imap(fn, items)``: in this process for one worker, else over a spawn pool."""
    if workers <= 1:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            yield lambda fn, items: map(fn, items)
        finally:
            torch.set_num_threads(before)
        return
    ctx = multiprocessing.get_context("spawn")
    pool = ctx.Pool(workers, initializer=_init_worker, initargs=(threads,))
    try:
        yield lambda fn, items: pool.imap_unordered(fn, items)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def run(
    config: StudyConfig | None = None,
    *,
    out: str | Path = "bnkit-study",
    workers: int | None = None,
    threads: int | None = None,
    device: str = "auto",
    cache: str | Path | None = None,
    user: UserSpec | None = None,
    progress: bool = True,
) -> Results:
    """Run the study (or finish an interrupted one) and return its results.

    Args:
        config: the grid; the default benchmark if None.
        out: the output folder (cells, results, cache by default); reused to resume.
        workers: processes to spread tasks over; default one per usable core on CPU.
        threads: torch threads per worker; default 1 per worker (small models run best so),
            all usable cores when there is one worker.
        device: "auto", "cpu" or "cuda".
        cache: where source models are cached; default ``out/cache``.
        user: the user's own model and data instead of the digits benchmark.
        progress: progress bars on stderr.

    Returns:
        :class:`~bnkit.study.results.Results` (also written to ``out/results.json`` and
        ``out/results.csv``). Rendering the report is separate: :func:`bnkit.study.report.render`.
    """
    config = config or StudyConfig.default()
    started = time.perf_counter()
    cpu0 = _cpu_seconds()
    dev = resolve_device(device)
    nworkers = workers if workers is not None else default_workers(dev)
    if nworkers < 1:
        raise StudyError(f"workers must be at least 1 (got {nworkers})")
    nthreads = threads or 1
    out = Path(out)
    spec = BenchSpec(config, str(Path(cache) if cache else out / "cache"), dev, user)
    bench = make_bench(spec)
    cells = grid(bench)
    done = load_finished(out / "cells", cells)
    todo = [c for c in cells if c not in done]
    from bnkit.stats.progress import Progress

    models: list[dict[str, Any]] = []
    with _executor(nworkers, nthreads) as imap:
        jobs = [(spec, norm, seed) for seed in range(config.seeds) for norm in bench.norms]
        with Progress(progress, len(jobs), "model", "bnkit study: source models") as bar:
            for info in imap(_call_pretrain, jobs):
                models.append(info)
                bar.advance(1)
        tasks = [(spec, group, str(out)) for group in _tasks(todo)]
        with Progress(progress, len(todo), "cell", "bnkit study: cells") as bar:
            for count in imap(_call_cells, tasks):
                bar.advance(count)
    finished = load_finished(out / "cells", cells)
    missing = [c.key for c in cells if c not in finished]
    if missing:
        raise StudyError(f"{len(missing)} cells did not finish (first: {missing[0]})")
    meta = _meta(bench, models, dev, nworkers, nthreads)
    meta.update(
        cells=len(cells),
        skipped=len(done),
        ran=len(todo),
        wall_s=time.perf_counter() - started,
        cpu_s=_cpu_seconds() - cpu0,
    )
    results = Results([finished[c] for c in cells], config.to_dict(), meta)
    from bnkit.study.checks import run_checks

    results.checks = run_checks(results)
    results.save(out)
    return results


def _meta(
    bench: Bench, models: list[dict[str, Any]], device: str, workers: int, threads: int
) -> dict[str, Any]:
    from bnkit import __version__

    models = sorted(models, key=lambda m: (m["model"], m["seed"]))
    return {
        **bench.describe(),
        "pool_size": bench.pool_size,
        "source_models": models,
        "device": device,
        "workers": workers,
        "threads_per_worker": threads,
        "torch": torch.__version__,
        "bnkit": __version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {usable_cores()} usable cores",
    }
