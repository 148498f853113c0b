"""The study's public entry point: run a grid, get :class:`Results` (rows, facts, verdicts).

:func:`run` executes the grid (:mod:`bnkit.study.execution`), then turns the rows into results
and evaluates the directional checks (:mod:`bnkit.study.results`); rendering the report is a
separate step (:func:`bnkit.study.results.report.render`).
"""

from __future__ import annotations

from pathlib import Path

from bnkit.errors import StudyError
from bnkit.study.config.settings import StudyConfig
from bnkit.study.execution import parts
from bnkit.study.execution.bench import UserSpec
from bnkit.study.execution.runner import execute
from bnkit.study.results.checks import run_checks
from bnkit.study.results.results import Results

__all__ = ["collect", "run"]


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
    executor: str = "local",
    address: str | None = None,
    shard: str | None = None,
) -> Results:
    """Run the study (or finish an interrupted one) and return its results.

    Args:
        config: the grid; the default benchmark if None.
        out: the output folder (cells, results, cache by default); reused to resume.
        workers: processes to spread tasks over; default one per usable core on CPU (at most
            8), one on a GPU.
        threads: torch threads per worker (default 1: small models run best so).
        device: "auto", "cpu" or "cuda".
        cache: where source models are cached; default ``out/cache``.
        user: the user's own data (and model) instead of the built-in benchmark.
        progress: progress bars on stderr.
        executor: ``"local"`` (a process pool on this machine) or ``"ray"`` (Ray tasks, on a
            local Ray instance or the cluster at ``address``; needs ``bnkit[ray]``).
        address: the Ray cluster to join (``"auto"``, ``"HOST:PORT"``); default: start one.
        shard: ``"I/N"``: run part I of N of the grid only (merge the parts with
            :func:`collect`); the results then hold that part's rows and no checks.

    Returns:
        :class:`~bnkit.study.results.results.Results` (also written to ``out/results.json``
        and ``out/results.csv``).

    Raises:
        StudyError: a bad setting, output folder, model or data, found before any work.
    """
    config = config or StudyConfig.default()
    out = Path(out)
    rows, meta = execute(
        config,
        out=out,
        workers=workers,
        threads=threads,
        device=device,
        cache=Path(cache) if cache else None,
        user=user,
        progress=progress,
        executor=executor,
        address=address,
        shard=parts.parse_shard(shard),
    )
    results = Results(rows, meta.pop("config"), meta)
    if meta["shard"][1] == 1:
        results.checks = run_checks(results)
    results.save(out)
    return results


def collect(folders: list[str | Path], *, out: str | Path) -> Results:
    """Merge the parts of a sharded study (their ``--out`` folders) into one result.

    The parts must come from the same settings, versions, device kind, data and model, and
    together hold every cell of the grid; the rows are those a single run would have given,
    in the same order, and the checks are evaluated on them.

    Raises:
        StudyError: parts of different studies (the message names what differs), a missing
            or repeated part, or a part whose cells are not all finished.
    """
    rows, fingerprint, folders_in_order = parts.collect([Path(f) for f in folders])
    metas = [Results.load(f).meta for f in folders_in_order]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise StudyError(f"--out {str(out)!r} is a file, not a folder; name a folder")
    models = {(m["source"], m["model"], m["seed"]): m for x in metas for m in x["source_models"]}
    meta = {
        **metas[0],
        "source_models": [models[k] for k in sorted(models)],
        "parts": [str(f) for f in folders_in_order],
        "shard": [0, 1],
        "cells": len(rows),
        "ran": sum(x["ran"] for x in metas),
        "skipped": sum(x["skipped"] for x in metas),
        "wall_s": max(x["wall_s"] for x in metas),
        "cpu_s": sum(x["cpu_s"] for x in metas),
    }
    results = Results(rows, fingerprint["settings"], meta)
    results.checks = run_checks(results)
    results.save(out)
    return results
