"""The store of finished cells: files and one index, identity checked on read, concurrent
writers, torn writes, writers killed between the file and the index line."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnkit.study.atomic import atomic_file
from bnkit.study.execution.cells import ROW_FIELDS
from bnkit.study.execution.index import Index, encode, parse
from bnkit.study.execution.store import CellStore

ROW = dict.fromkeys(ROW_FIELDS, 0)
IDENT = {"cell": {"seed": 0}, "run": {"bnkit": "1"}}


def reopened(folder: Path) -> CellStore:
    store = CellStore(folder)
    store.load()
    return store


def test_a_row_is_read_back_only_under_its_own_identity(tmp_path: Path) -> None:
    store = CellStore(tmp_path)
    store.write("c", "k1", IDENT, ROW)
    for s in (store, reopened(tmp_path)):
        assert s.read("c", "k1", IDENT) == ROW
        assert s.read("c", "k1", {**IDENT, "run": {"bnkit": "2"}}) is None  # same name and key
        assert s.read("c", "k2", IDENT) is None


def test_resume_reads_the_index_not_the_cell_files(tmp_path: Path) -> None:
    store = CellStore(tmp_path)
    for i in range(20):
        store.write(f"c{i}", "k", IDENT, {**ROW, "seed": i})
    for path in tmp_path.glob("c*~k.json"):
        path.write_text("{ not read on resume", encoding="utf-8")
    again = reopened(tmp_path)
    assert again.facts == {"indexed": 20, "recovered": 0, "damaged": 0, "duplicates": 0}
    assert [again.read(f"c{i}", "k", IDENT)["seed"] for i in range(20)] == list(range(20))  # type: ignore[index]


def test_a_cell_written_but_not_indexed_is_recovered(tmp_path: Path) -> None:
    store = CellStore(tmp_path)
    store.write("a", "k", IDENT, ROW)
    with atomic_file(store.path("b", "k")) as f:  # a writer killed after the file, before the line
        f.write(json.dumps({"identity": IDENT, "row": {**ROW, "seed": 7}}))
    (tmp_path / "x~k.json").write_text("{ half", encoding="utf-8")  # not a finished cell
    again = reopened(tmp_path)
    assert again.facts["recovered"] == 1 and again.read("b", "k", IDENT)["seed"] == 7  # type: ignore[index]
    assert again.read("x", "k", IDENT) is None
    assert reopened(tmp_path).facts["recovered"] == 0  # its line is in the index now


def test_a_torn_index_line_loses_only_itself_and_is_compacted_away(tmp_path: Path) -> None:
    store = CellStore(tmp_path)
    store.write("a", "k", IDENT, ROW)
    index = tmp_path / "index.jsonl"
    line = encode({"name": "b", "key": "k", "digest": "d", "row": ROW})
    with index.open("ab") as f:
        f.write(line[: len(line) // 2])  # a writer killed in the middle of its line
    store.write("c", "k", IDENT, ROW)  # the next writer starts a line of its own
    assert parse(line[: len(line) // 2]) is None and parse(line) is not None
    again = reopened(tmp_path)
    assert again.facts == {"indexed": 2, "recovered": 0, "damaged": 1, "duplicates": 0}
    assert again.read("a", "k", IDENT) == again.read("c", "k", IDENT) == ROW
    assert reopened(tmp_path).facts["damaged"] == 0  # compacted
    assert len(index.read_bytes().splitlines()) == 2


def test_a_line_with_a_wrong_checksum_is_refused() -> None:
    line = encode({"name": "a", "key": "k", "digest": "d", "row": ROW})
    assert parse(line.replace(b'"a"', b'"b"')) is None
    assert parse(b"zz {}") is None and parse(b"") is None


def _writer(folder: str, first: int, count: int) -> None:
    store = CellStore(folder)
    for i in range(first, first + count):
        store.write(f"c{i}", "k", IDENT, {**ROW, "seed": i, "curve": list(range(50))})


def test_concurrent_writers_lose_and_double_nothing(tmp_path: Path) -> None:
    spawn = multiprocessing.get_context("fork")
    procs = [spawn.Process(target=_writer, args=(str(tmp_path), 100 * w, 60)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    entries, bad, dup = Index(tmp_path).read()
    assert (bad, dup) == (0, 0)
    assert sorted(e["row"]["seed"] for e in entries.values()) == sorted(
        100 * w + i for w in range(4) for i in range(60)
    )


KILLED_WRITER = """
import sys
from bnkit.study.execution.store import CellStore
from bnkit.study.execution.cells import ROW_FIELDS
store = CellStore(sys.argv[1])
row = dict.fromkeys(ROW_FIELDS, 0)
row["curve"] = list(range(20000))  # long lines: a kill lands inside writes
i = 0
while True:
    store.write(f"c{i}", "k", {"i": i}, row)
    i += 1
"""


def test_writers_killed_mid_write_leave_a_store_that_loads(tmp_path: Path) -> None:
    procs = [
        subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(tmp_path)]) for _ in range(2)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("c*~k.json"))) < 4 and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.031)  # somewhere in the middle of a write
    for p in procs:
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
    store = CellStore(tmp_path)
    store.clean()
    facts = store.load()
    files = {p.stem.split("~")[0] for p in tmp_path.glob("c*~k.json")}
    assert facts["indexed"] + facts["recovered"] == len(files) > 0  # every finished cell
    entries, bad, dup = Index(tmp_path).read()
    assert (bad, dup) == (0, 0) and {e["name"] for e in entries.values()} == files
    assert not list(tmp_path.glob(".*.tmp"))


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
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["d~k.json", "index.jsonl", "index.lock"]
    assert json.loads((tmp_path / "d~k.json").read_text())["row"] == ROW
