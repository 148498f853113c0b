"""The index of finished cells: one append-only file of checksummed lines, one line per cell.

``OUT/cells/index.jsonl`` holds, per finished cell, a line ``<crc32> <json>`` with the cell's
name, key, a SHA-256 digest of its whole identity and its row, so a study that resumes (or
``bnkit study collect``) reads one file, not one file per cell.

* **Concurrent writers** (pool workers, shards sharing a folder, several drivers) append under
  an exclusive ``flock`` on ``index.lock``, a file that is never replaced; each line goes out in
  one ``write`` and is flushed to disk before the lock is released.
* **Torn writes.** A writer killed in the middle of its line leaves a fragment without its
  newline; the next writer starts its own line first, and every reader drops a line whose
  checksum does not match. A torn line therefore loses nothing but itself: the cell's own file
  was written (atomically) before its line, and :meth:`CellStore.load` puts cells that have a
  file but no line back into the index.
* **Compaction** (torn lines, duplicates) rewrites the file under the same lock in one rename.

On a network file system ``flock`` is emulated with POSIX locks (Linux NFS clients do so), and
the lock also orders the appends that ``O_APPEND`` alone would not there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bnkit.study.atomic import atomic_write

__all__ = ["Entry", "Index", "encode", "parse"]

Entry = dict[str, Any]
"""One index line's data: ``name``, ``key``, ``digest`` (of the identity) and ``row``."""


def encode(entry: Entry) -> bytes:
    """The line of ``entry``: CRC-32 of its JSON text, a space, the text, a newline."""
    text = json.dumps(entry, sort_keys=True, separators=(",", ":"))
    return f"{zlib.crc32(text.encode()):08x} {text}\n".encode()


def parse(line: bytes) -> Entry | None:
    """The entry of one line, or None when the line is torn or damaged."""
    crc, _, text = line.rstrip(b"\n").partition(b" ")
    try:
        if int(crc, 16) != zlib.crc32(text):
            return None
        entry = json.loads(text)
    except ValueError:
        return None
    ok = isinstance(entry, dict) and {"name", "key", "digest", "row"} <= set(entry)
    return entry if ok else None


class Index:
    """The index file of a cell folder."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "index.jsonl"
        self.lock_path = folder / "index.lock"

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the index's exclusive lock (released when this process dies, too)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def append(self, entries: list[Entry]) -> None:
        """Append the lines of ``entries`` (one write, flushed) under the lock."""
        if not entries:
            return
        data = b"".join(encode(e) for e in entries)
        with self.locked():
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data  # a torn line before: end it, never extend it
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)

    def read(self) -> tuple[dict[tuple[str, str], Entry], int, int]:
        """(entries by (name, key), damaged lines, duplicate lines); the last line wins."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}, 0, 0
        entries: dict[tuple[str, str], Entry] = {}
        bad = dup = 0
        for line in raw.splitlines():
            if not line.strip():
                continue
            entry = parse(line)
            if entry is None:
                bad += 1
                continue
            where = (str(entry["name"]), str(entry["key"]))
            dup += where in entries
            entries[where] = entry
        return entries, bad, dup

    def compact(self) -> None:
        """Rewrite the file without damaged or duplicate lines (atomically, under the lock)."""
        with self.locked():
            entries, _, _ = self.read()
            text = b"".join(encode(e) for e in entries.values()).decode()
            atomic_write(self.path, text)
