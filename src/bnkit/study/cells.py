"""Cells: one measurement each, named by a key, stored as one small JSON file when finished.

A cell is (protocol, model, strategy, shift, severity, stream, batch size, n, k, lr, seed).
Its file ``<key>~<settings hash>.json`` lives in ``OUT/cells/`` and is written atomically
(a temporary file in the same folder, flushed, then ``os.replace``), so a study killed at any
moment leaves only whole files; a restarted study loads them and skips those cells.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bnkit.study._atomic import atomic_file

__all__ = ["ROW_FIELDS", "Cell", "load_finished", "write_cell"]

ROW_FIELDS = (
    "protocol",
    "model",
    "strategy",
    "shift",
    "family",
    "severity",
    "stream",
    "batch_size",
    "n",
    "k",
    "lr",
    "seed",
    "accuracy",
    "ece",
    "nonfinite",
    "wall_s",
    "images_per_s",
)
"""The columns of ``results.csv``, in order."""


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
    """One measurement of the grid.

    Attributes:
        protocol: ``"test_time"``, ``"finetune"`` or ``"bn_only"``.
        model: ``"bn"`` or ``"gn"`` (the GroupNorm twin).
        strategy: a name from :mod:`bnkit.study.strategies` (``"scratch"`` for bn_only).
        shift, severity: the target domain (``"none"``/0 unshifted, ``"source"`` for bn_only).
        stream: test stream order, ``"iid"`` or ``"sorted"``.
        batch_size: test batch size (test_time) or fine-tuning batch size; 0 if unused.
        n: unlabelled target samples used for statistics (adabn); 0 if unused.
        k: labels per class (finetune); 0 if unused.
        lr: fine-tuning learning rate; 0 if unused.
        seed: the seed.
        settings: hash of the settings that decide the result (see ``StudyConfig``).
    """

    protocol: str
    model: str
    strategy: str
    shift: str
    severity: int
    stream: str
    batch_size: int
    n: int
    k: int
    lr: float
    seed: int
    settings: str

    @property
    def key(self) -> str:
        """A readable unique name (safe as a file name)."""
        return (
            f"{self.protocol}.{self.model}.{self.strategy}.{self.shift}{self.severity}."
            f"{self.stream}.b{self.batch_size}.n{self.n}.k{self.k}.lr{self.lr:g}.s{self.seed}"
        )

    @property
    def filename(self) -> str:
        return f"{self.key}~{self.settings}.json"

    def fields(self) -> dict[str, Any]:
        """The cell's coordinates as row fields (without the settings hash)."""
        d = dataclasses.asdict(self)
        del d["settings"]
        return d


def write_cell(folder: Path, cell: Cell, row: dict[str, Any]) -> None:
    """Write the finished ``cell`` with its result ``row`` atomically into ``folder``."""
    payload = json.dumps({"cell": dataclasses.asdict(cell), "row": row}, sort_keys=True)
    with atomic_file(folder / cell.filename) as f:
        f.write(payload)


def load_finished(folder: Path, cells: Iterable[Cell]) -> dict[Cell, dict[str, Any]]:
    """The rows of those ``cells`` that have a finished file in ``folder``.

    Leftover temporary files of an interrupted write are removed; a file that cannot be read
    as a finished cell of that name is ignored (the cell runs again and replaces it).
    """
    if not folder.is_dir():
        return {}
    for tmp in folder.glob(".cell-*.tmp"):
        tmp.unlink(missing_ok=True)
    found: dict[Cell, dict[str, Any]] = {}
    for cell in cells:
        path = folder / cell.filename
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("cell") == dataclasses.asdict(cell):
            row = data.get("row")
            if isinstance(row, dict) and set(ROW_FIELDS) <= set(row):
                found[cell] = row
    return found
