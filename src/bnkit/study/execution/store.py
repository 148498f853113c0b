"""The store of finished cells: a file per cell, and one index that resume and collect read.

A cell's file ``OUT/cells/<name>~<key>.json`` holds its identity and its row and is written
atomically first; then its line is appended to the index (:mod:`bnkit.study.execution.index`).
:meth:`CellStore.load` reads the index (one file, however many cells), puts back cells whose
file was written but whose line was not (a writer killed between the two), and compacts the
index when it held torn or repeated lines. A row is returned only for the identity it was
computed under (its key, and the SHA-256 digest of the whole identity), so rows of another
checkpoint, data folder, version or setting are never read for this run. Any number of
processes may write into one store at once. Which process computes a cell is the executor's
business (:mod:`bnkit.study.execution.local`, :mod:`bnkit.study.execution.ray_executor`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from bnkit.study.atomic import atomic_write, remove_leftovers
from bnkit.study.execution.cells import ROW_FIELDS
from bnkit.study.execution.index import Entry, Index

__all__ = ["CellStore", "digest"]


def digest(identity: dict[str, Any]) -> str:
    """SHA-256 (hex) of an identity's canonical JSON text."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _valid(row: Any) -> bool:
    return isinstance(row, dict) and set(ROW_FIELDS) <= set(row)


class CellStore:
    """Finished cells in ``folder``, addressed by name and key."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.index = Index(self.folder)
        self._entries: dict[tuple[str, str], Entry] = {}
        self.facts: dict[str, int] = {}

    def path(self, name: str, key: str) -> Path:
        return self.folder / f"{name}~{key}.json"

    def clean(self) -> int:
        """Remove the temporary files of killed writes; return how many."""
        return remove_leftovers(self.folder)

    def write(self, name: str, key: str, identity: dict[str, Any], row: dict[str, Any]) -> None:
        """Store a finished cell: its file (atomically), then its index line."""
        payload = json.dumps({"identity": identity, "row": row}, sort_keys=True)
        atomic_write(self.path(name, key), payload)
        entry = {"name": name, "key": key, "digest": digest(identity), "row": row}
        self.index.append([entry])
        self._entries[(name, key)] = entry

    def _recover(self, name: str, key: str) -> Entry | None:
        try:
            data = json.loads(self.path(name, key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict) or not _valid(data.get("row")):
            return None
        identity = data.get("identity")
        if not isinstance(identity, dict):
            return None
        return {"name": name, "key": key, "digest": digest(identity), "row": data["row"]}

    def load(self) -> dict[str, int]:
        """Read the index, index the cells written but not indexed, compact a damaged index.

        Returns the facts: ``indexed`` (cells in the index), ``recovered`` (cells put back),
        ``damaged`` and ``duplicates`` (index lines dropped by the compaction).
        """
        entries, bad, dup = self.index.read()
        missing = []
        if self.folder.is_dir():
            for path in self.folder.glob("*~*.json"):
                name, _, key = path.stem.rpartition("~")
                if (name, key) not in entries:
                    got = self._recover(name, key)
                    if got is not None:
                        missing.append(got)
        self.index.append(missing)
        for entry in missing:
            entries[(entry["name"], entry["key"])] = entry
        if bad or dup:
            self.index.compact()
        self._entries = entries
        self.facts = {
            "indexed": len(entries) - len(missing),
            "recovered": len(missing),
            "damaged": bad,
            "duplicates": dup,
        }
        return self.facts

    def read(self, name: str, key: str, identity: dict[str, Any]) -> dict[str, Any] | None:
        """The stored row of that cell as last loaded or written here, or None (missing, or
        computed under another identity)."""
        return self.row(name, key, digest(identity))

    def row(self, name: str, key: str, identity_digest: str) -> dict[str, Any] | None:
        """As :meth:`read`, given the digest of the identity."""
        entry = self._entries.get((name, key))
        if entry is None or entry["digest"] != identity_digest or not _valid(entry["row"]):
            return None
        row: dict[str, Any] = entry["row"]
        return row
