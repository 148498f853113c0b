"""The store of finished cells: one small JSON file per cell, written atomically.

A cell's file ``OUT/cells/<name>~<key>.json`` holds its identity and its row. A study killed
at any moment leaves only whole files (and perhaps temporary files of killed writes, removed
on the next start); a restarted study loads the rows whose stored identity equals the cell's
and runs the rest. Rows of another checkpoint, data folder, version or setting have another key
and are never read for this run. The store only reads and writes rows: which process computes
a cell is the executor's business (:mod:`bnkit.study.execution.local`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bnkit.study.atomic import atomic_write, remove_leftovers
from bnkit.study.execution.cells import ROW_FIELDS

__all__ = ["CellStore"]


class CellStore:
    """Finished cells in ``folder``, addressed by name and key."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def path(self, name: str, key: str) -> Path:
        return self.folder / f"{name}~{key}.json"

    def clean(self) -> int:
        """Remove the temporary files of killed writes; return how many."""
        return remove_leftovers(self.folder)

    def write(self, name: str, key: str, identity: dict[str, Any], row: dict[str, Any]) -> None:
        """Store a finished cell (atomically)."""
        payload = json.dumps({"identity": identity, "row": row}, sort_keys=True)
        atomic_write(self.path(name, key), payload)

    def read(self, name: str, key: str, identity: dict[str, Any]) -> dict[str, Any] | None:
        """The stored row of that cell, or None (missing, unreadable, or another identity)."""
        try:
            data = json.loads(self.path(name, key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or data.get("identity") != identity:
            return None
        row = data.get("row")
        if isinstance(row, dict) and set(ROW_FIELDS) <= set(row):
            return row
        return None
