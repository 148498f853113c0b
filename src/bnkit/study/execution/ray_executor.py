"""The Ray executor: the same tasks as the local pool, as Ray tasks on one machine or many.

* **Pretraining** is one task per source model the remaining cells need (a model already in
  the driver's cache is put into Ray's object store instead, and a user's checkpoint is read
  by each worker). It returns the cache file's bytes; the driver writes them into its cache,
  so a resumed study does not train again. The driver builds no model and needs no GPU.
* **Cells** run in tasks of cells that load the same data (:func:`~bnkit.study.execution.
  tasks.group`); each task takes the object reference of its source model as an argument, so
  Ray starts it only once that model exists, and no two workers ever train the same model.
* **Results** come back to the driver, which writes every row into its store as its task
  finishes (:class:`~bnkit.study.execution.store.CellStore`): rows land where the driver
  collects them, with or without a file system shared with the workers, and a study stopped
  at any moment resumes from the rows written.
* **Failures.** A task whose worker process dies (killed, out of memory, a lost node) is
  retried by Ray (``max_retries``); nothing of the dead attempt was written, and the driver
  writes a task's rows once, when the retry returns them, so no row is lost or doubled.

Ray is imported only here, when the executor starts: ``import bnkit.study`` never imports it.
Without ``--address`` a local Ray instance is started with its files under ``OUT/ray`` (reached
through a short link in the temporary folder, as Unix sockets need short paths) and is shut
down at the end; with ``--address`` the study joins that cluster, and every node must be able
to import bnkit (and the user's model and data factories) and read the data folder.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bnkit.errors import MissingDependencyError
from bnkit.study.atomic import atomic_file
from bnkit.study.execution.bench import BenchSpec
from bnkit.study.execution.store import CellStore
from bnkit.study.execution.tasks import (
    Job,
    ModelKey,
    cached_info,
    compute_rows,
    pretrain,
    pretrain_payload,
)

__all__ = ["MAX_RETRIES", "import_ray", "ray_session", "run_on_ray"]

MAX_RETRIES = 3
"""Times Ray reruns a task whose worker died."""


def import_ray() -> Any:
    """The ``ray`` module, or MissingDependencyError naming the extra to install."""
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise MissingDependencyError(
            "bnkit study --executor ray needs Ray, which is not installed; install it with "
            "pip install 'bnkit[ray]' (or run with the local pool, the default)"
        ) from None


@contextlib.contextmanager
def ray_session(
    ray: Any, address: str | None, folder: Path, cpus: int, gpus: int | None
) -> Iterator[None]:
    """Join the cluster at ``address``, or start a local instance with its files in
    ``folder``; shut it down afterwards (a local instance leaves no process behind)."""
    if address is not None:
        ray.init(address=address, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()
        return
    folder.mkdir(parents=True, exist_ok=True)
    link = Path(tempfile.mkdtemp(prefix="bnkit-ray-")) / "r"
    link.symlink_to(folder.resolve(), target_is_directory=True)
    saved = {name: os.environ.get(name) for name in _AUTH}
    if not any(saved.values()):  # the user chose nothing: a token, kept out of the home folder
        os.environ["RAY_AUTH_TOKEN"] = _token()
    try:
        ray.init(
            num_cpus=cpus,
            num_gpus=gpus,
            _temp_dir=str(link),
            include_dashboard=False,
            log_to_driver=False,
        )
        try:
            yield
        finally:
            ray.shutdown()
    finally:
        for name, value in saved.items():  # Ray sets RAY_AUTH_MODE itself: undo that too
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        link.unlink()
        link.parent.rmdir()


_AUTH = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")
_TOKENS: list[str] = []


def _token() -> str:
    """One random token per process (Ray's driver keeps the first token it reads)."""
    if not _TOKENS:
        _TOKENS.append(secrets.token_hex(16))
    return _TOKENS[0]


def _save(path: Path, payload: bytes) -> None:
    if not path.exists():
        with atomic_file(path, "wb") as f:
            f.write(payload)


def run_on_ray(
    spec: BenchSpec,
    models: list[ModelKey],
    tasks: list[tuple[list[Job], list[ModelKey]]],
    *,
    store: CellStore,
    paths: dict[ModelKey, Path | None],
    address: str | None,
    cpus: int,
    gpu: bool,
    threads: int,
    on_model: Callable[[dict[str, Any]], None],
    on_cells: Callable[[int], None],
) -> None:
    """Get the source ``models`` ready and compute ``tasks`` (jobs and the models they take)
    on Ray, writing every row into ``store`` as its task returns.

    ``paths`` names each model's cache file (None: the model is the user's checkpoint, which
    every worker loads itself). Facts about a model come from its cache file when the driver
    has it, else from the task that trains it (or reads the checkpoint), so the driver never
    builds a model: it needs no GPU, even for ``gpu`` tasks.
    """
    ray = import_ray()
    for model in models:
        path = paths.get(model)
        if path is not None and path.exists():
            on_model(cached_info(model, path))
    fresh = [m for m in models if (p := paths.get(m)) is None or not p.exists()]
    if not tasks and not fresh:
        return  # nothing to compute: no cluster to start
    folder = store.folder.parent / "ray"
    with ray_session(ray, address, folder, cpus, None if gpu else 0):
        options = {"num_cpus": threads, "num_gpus": 1 if gpu else 0, "max_retries": MAX_RETRIES}
        pre = ray.remote(**options)(_pretrain_task)
        info = ray.remote(**options)(_info_task)
        cells = ray.remote(**options)(_cells_task)
        refs: dict[ModelKey, Any] = {}
        pending: dict[Any, str] = {}
        for model in models:
            path = paths.get(model)
            if path is None:
                pending[info.remote(spec, model, threads)] = "info"
            elif path.exists():
                refs[model] = ray.put(path.read_bytes())
            else:
                info_ref, refs[model] = pre.options(num_returns=2).remote(spec, model, threads)
                pending[info_ref] = "model"
        for jobs, used in tasks:
            pending[cells.remote(spec, jobs, threads, used, *[refs[m] for m in used])] = "cells"
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            kind = pending.pop(done[0])
            got = ray.get(done[0])
            if kind == "cells":
                for name, key, identity, row in got:
                    store.write(name, key, identity, row)
                on_cells(len(got))
                continue
            if kind == "model":
                model = (got["source"], got["model"], got["seed"])
                saved = paths.get(model)
                if saved is not None:
                    _save(saved, ray.get(refs[model]))
            on_model(got)


def _pretrain_task(spec: BenchSpec, model: ModelKey, threads: int) -> tuple[dict[str, Any], bytes]:
    import torch

    torch.set_num_threads(threads)
    return pretrain_payload(spec, model)


def _info_task(spec: BenchSpec, model: ModelKey, threads: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(threads)
    return pretrain((spec, model))


def _cells_task(
    spec: BenchSpec, jobs: list[Job], threads: int, used: list[ModelKey], *payloads: bytes
) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    import torch

    torch.set_num_threads(threads)
    return compute_rows(spec, jobs, dict(zip(used, payloads, strict=True)))
