"""Parts of a grid: ``--shard I/N``, the manifest of each run, and collecting parts into one.

``--shard I/N`` runs part I of N: the grid's tasks (cells grouped by the data they load, in
grid order) dealt round-robin, task ``t`` to part ``t mod N``, so every part is the same on
every machine and the parts are disjoint and together the whole grid. Every run writes
``OUT/part.json``: what decides its numbers (:func:`fingerprint`: settings, versions, device
kind, data and model identities), its shard, the grid's size, and for each of its cells the
position in the grid, name, key and identity digest. :func:`collect` reads the manifests and
the store index of each part folder, refuses parts of different studies or an incomplete set,
and returns every row once, in grid order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bnkit.errors import StudyError
from bnkit.study.atomic import atomic_write
from bnkit.study.execution.store import CellStore

__all__ = ["FORMAT", "collect", "parse_shard", "read_part", "select", "write_part"]

FORMAT = 1
"""The manifest's format."""


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"I/N"`` → (I, N) with 0 ≤ I < N; None → (0, 1), the whole grid."""
    if text is None:
        return 0, 1
    part, _, total = text.partition("/")
    try:
        i, n = int(part), int(total)
    except ValueError:
        i, n = -1, 0
    if not 0 <= i < n:
        raise StudyError(f"--shard must be I/N with 0 <= I < N, e.g. 0/4 (got {text!r})")
    return i, n


def select(tasks: list[Any], shard: tuple[int, int]) -> list[Any]:
    """The tasks of part ``shard`` = (I, N): every N-th, starting at I."""
    i, n = shard
    return tasks[i::n]


def write_part(
    out: Path,
    fingerprint: dict[str, Any],
    shard: tuple[int, int],
    total: int,
    cells: list[tuple[int, str, str, str]],
) -> None:
    """Write ``out/part.json``: fingerprint, shard, grid size, (position, name, key, digest)."""
    data = {
        "format": FORMAT,
        "fingerprint": fingerprint,
        "shard": list(shard),
        "total": total,
        "cells": [list(c) for c in cells],
    }
    atomic_write(out / "part.json", json.dumps(data, sort_keys=True))


def read_part(folder: Path) -> dict[str, Any]:
    """The manifest of a study folder."""
    path = folder / "part.json"
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudyError(
            f"{str(folder)!r} holds no part.json: name the --out folder of a bnkit study run "
            "(a shard's, or a whole run's)"
        ) from None
    except (OSError, ValueError) as err:
        raise StudyError(f"cannot read {str(path)!r}: {err}") from None
    if data.get("format") != FORMAT:
        raise StudyError(f"{str(path)!r} has manifest format {data.get('format')!r}, not {FORMAT}")
    return data


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{where}.{key}" if where else key)
        return out
    return [] if a == b else [f"{where}: {json.dumps(a)} vs {json.dumps(b)}"]


def collect(folders: Sequence[Path]) -> tuple[list[dict[str, Any]], dict[str, Any], list[Path]]:
    """The rows of the parts in ``folders`` in grid order, their shared fingerprint, and the
    folders in part order.

    Raises:
        StudyError: no folder, a folder that is no study run, parts of different settings,
            versions, devices, data or models (naming what differs), a part named twice, a
            missing part, or a part whose cells are not all finished.
    """
    if not folders:
        raise StudyError("bnkit study collect needs the folders of the parts to merge")
    parts = [(Path(f), read_part(Path(f))) for f in folders]
    first, base = parts[0]
    for folder, part in parts[1:]:
        diff = _differences(base["fingerprint"], part["fingerprint"])
        if diff:
            shown = "; ".join(diff[:3]) + ("; …" if len(diff) > 3 else "")
            raise StudyError(
                f"{str(folder)!r} and {str(first)!r} are parts of different studies ({shown}); "
                "collect only parts run with the same settings, versions, device kind, data "
                "and model"
            )
    n = base["shard"][1]
    by_shard: dict[int, Path] = {}
    for folder, part in parts:
        i, count = part["shard"]
        if count != n or part["total"] != base["total"]:
            raise StudyError(
                f"{str(folder)!r} is part {i}/{count} of a grid of {part['total']} cells, but "
                f"{str(first)!r} is part {base['shard'][0]}/{n} of {base['total']}"
            )
        if i in by_shard:
            raise StudyError(f"part {i}/{n} is named twice: {str(by_shard[i])!r}, {str(folder)!r}")
        by_shard[i] = folder
    missing = [f"{i}/{n}" for i in range(n) if i not in by_shard]
    if missing:
        raise StudyError(f"parts {', '.join(missing)} are missing; name every part's folder")
    rows: dict[int, dict[str, Any]] = {}
    for folder, part in parts:
        store = CellStore(folder / "cells")
        store.load()
        for pos, name, key, digest in part["cells"]:
            row = store.row(name, key, digest)
            if row is None:
                raise StudyError(
                    f"part {part['shard'][0]}/{n} in {str(folder)!r} has not finished (cell "
                    f"{name}); run its command again, then collect"
                )
            rows[int(pos)] = row
    if sorted(rows) != list(range(base["total"])):
        raise StudyError(f"the parts hold {len(rows)} of the grid's {base['total']} cells")
    return (
        [rows[p] for p in range(base["total"])],
        base["fingerprint"],
        [by_shard[i] for i in range(n)],
    )
