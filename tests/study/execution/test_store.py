"""The store of finished cells: atomic files, identity checked on read, leftovers cleaned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bnkit.study.atomic import atomic_file
from bnkit.study.execution.cells import ROW_FIELDS
from bnkit.study.execution.store import CellStore

ROW = dict.fromkeys(ROW_FIELDS, 0)
IDENT = {"cell": {"seed": 0}, "run": {"bnkit": "1"}}


def test_a_row_is_read_back_only_under_its_own_identity(tmp_path: Path) -> None:
    store = CellStore(tmp_path)
    store.write("c", "k1", IDENT, ROW)
    assert store.read("c", "k1", IDENT) == ROW
    assert store.read("c", "k1", {**IDENT, "run": {"bnkit": "2"}}) is None  # same name and key
    assert store.read("c", "k2", IDENT) is None
    (tmp_path / "c~k1.json").write_text("{ half a file", encoding="utf-8")
    assert store.read("c", "k1", IDENT) is None  # unreadable: the cell runs again


def test_leftovers_of_killed_writes_are_removed_on_start(tmp_path: Path) -> None:
    """Regression: the clean-up looked for ``.cell-*.tmp`` while writes left
    ``.<name>~<key>.json.<random>.tmp``, so leftovers of killed writes stayed."""
    store = CellStore(tmp_path)

    def interrupted() -> None:
        with atomic_file(store.path("c", "k")) as f:
            f.write("{")
            raise KeyboardInterrupt  # a write interrupted in the process is cleaned at once

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert not list(tmp_path.iterdir())
    killed = tmp_path / ".c~k.json.abc123.tmp"  # what SIGKILL in the middle of a write leaves
    killed.write_text("{", encoding="utf-8")
    store.write("d", "k", IDENT, ROW)
    assert store.clean() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d~k.json"]
    assert json.loads((tmp_path / "d~k.json").read_text())["row"] == ROW
