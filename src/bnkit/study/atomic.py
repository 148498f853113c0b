"""Atomic file writes: a temporary file in the same folder, flushed to disk, then renamed.

A study killed at any moment leaves either the old file or the new one, never half of one;
finished files get the usual permissions (``0o666`` minus the umask), not a temporary file's.
A killed write can leave its temporary file behind (``.<name>.<random>.tmp``);
:func:`remove_leftovers` deletes those.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_file", "atomic_write", "remove_leftovers", "temporary_name"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def temporary_name(path: Path) -> tuple[str, str]:
    """``(prefix, suffix)`` of the temporary files that writes of ``path`` use."""
    return f".{path.name}.", ".tmp"


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on success it replaces ``path`` in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix, suffix = temporary_name(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_file(path) as f:
        f.write(text)


def remove_leftovers(folder: Path) -> int:
    """Delete the temporary files of killed writes in ``folder``; return how many."""
    if not folder.is_dir():
        return 0
    count = 0
    for tmp in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            count += 1
    return count
