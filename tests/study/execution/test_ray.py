"""The Ray executor: the local pool's rows, a killed worker's task rerun once, resume, and Ray
imported only when asked for."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from bnkit.errors import MissingDependencyError
from bnkit.study import Results, StudyConfig, run
from bnkit.study.execution.cells import Cell
from bnkit.study.execution.faults import KILL_CELL, KILL_ONCE
from bnkit.study.execution.index import Index
from bnkit.study.execution.ray_executor import import_ray


def numbers(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("wall_s", "images_per_s")}


def children() -> set[int]:
    """Live child processes of this process (Linux /proc)."""
    out = set()
    for task in Path(f"/proc/{os.getpid()}/task").glob("*"):
        with contextlib.suppress(OSError):
            out |= {int(c) for c in (task / "children").read_text().split()}
    return {p for p in out if Path(f"/proc/{p}").exists()}


def test_without_ray_the_executor_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # (that importing bnkit.study does not import ray: test_runner's import test)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'bnkit\[ray\]'"):
        import_ray()


@pytest.mark.slow
def test_ray_gives_the_local_pools_rows_and_reruns_a_killed_workers_task_once(
    tiny_run: tuple[Results, Path],
    tiny_toml: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("ray")
    local, _ = tiny_run
    victim = next(r for r in local.rows if r["protocol"] == "finetune")
    name = Cell(**{f: victim[f] for f in Cell.__dataclass_fields__}).name
    marker = tmp_path / "killed"
    monkeypatch.setenv(KILL_ONCE, str(marker))
    monkeypatch.setenv(KILL_CELL, name)
    before = children()
    out = tmp_path / "out"
    config = StudyConfig.from_toml(tiny_toml)
    got = run(config, out=out, workers=2, executor="ray", progress=False)
    assert marker.exists(), "the worker computing the cell was not killed"
    attempts = (tmp_path / "killed.attempts").read_text().split()
    assert len(attempts) == 2 and len(set(attempts)) == 2  # killed once, rerun once elsewhere
    assert [numbers(r) for r in got.rows] == [numbers(r) for r in local.rows]  # same numbers
    entries, bad, dup = Index(out / "cells").read()
    assert len(entries) == len(local.rows) and (bad, dup) == (0, 0)  # none lost, none twice
    assert got.meta["executor"] == "ray" and got.checks == local.checks
    assert children() <= before, "Ray left processes behind"
    assert (out / "ray").is_dir()  # Ray's files stay in the run's folder

    # resume: a driver stopped before the last rows came back
    index = out / "cells" / "index.jsonl"
    lines = index.read_text().splitlines(keepends=True)
    index.write_text("".join(lines[:-5]))
    for line in lines[-5:]:
        cell = line.split('"name":"')[1].split('"')[0]
        for path in (out / "cells").glob(f"{cell}~*.json"):
            path.unlink()
    again = run(config, out=out, workers=2, executor="ray", progress=False)
    assert again.meta["ran"] == 5 and again.meta["skipped"] == len(local.rows) - 5
    assert [numbers(r) for r in again.rows] == [numbers(r) for r in local.rows]
    assert len(attempts) == 2
    assert children() <= before


@pytest.mark.slow
def test_ray_runs_the_quick_grid_with_the_local_pools_rows(tmp_path: Path) -> None:
    # the whole quick grid (399 cells), 2 CPUs each way; the source models are trained once
    pytest.importorskip("ray")
    config = StudyConfig.quick()
    cache = tmp_path / "cache"
    pool = run(config, out=tmp_path / "pool", workers=2, cache=cache, progress=False)
    before = children()
    on_ray = run(
        config, out=tmp_path / "ray", workers=2, cache=cache, executor="ray", progress=False
    )
    assert len(pool.rows) == len(on_ray.rows) == 399
    assert [numbers(r) for r in on_ray.rows] == [numbers(r) for r in pool.rows]
    assert on_ray.checks == pool.checks
    assert on_ray.meta["executor"] == "ray" and pool.meta["executor"] != "ray"
    assert children() <= before, "Ray left processes behind"


@pytest.mark.slow
def test_ray_joins_a_running_cluster_at_its_address(
    tiny_run: tuple[Results, Path], tiny_toml: Path, tmp_path: Path
) -> None:
    # `ray start --head` as on a cluster's head node, then `bnkit study --address`
    pytest.importorskip("ray")
    local, _ = tiny_run
    ray_cli = str(Path(sys.executable).parent / "ray")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="bnkr")  # short: Ray puts socket paths under it
    start = [ray_cli, "start", "--head", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
             "--include-dashboard=false", f"--temp-dir={temp}",
             "--disable-usage-stats"]  # fmt: skip
    subprocess.run(start, check=True, capture_output=True, timeout=180)
    try:
        got = run(
            StudyConfig.from_toml(tiny_toml), out=tmp_path / "out", workers=2,
            executor="ray", address=f"127.0.0.1:{port}", progress=False,
        )  # fmt: skip
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=180)
        shutil.rmtree(temp, ignore_errors=True)
    assert [numbers(r) for r in got.rows] == [numbers(r) for r in local.rows]
    assert got.meta["executor"] == "ray" and got.checks == local.checks
    assert not (tmp_path / "out" / "ray").exists()  # a joined cluster keeps its own files
