"""A progress bar for long loops: tqdm or rich when installed, shown only once a run is slow."""

from __future__ import annotations

import importlib.util
import sys
import time
from types import TracebackType
from typing import Any

from bnkit.errors import RecalibrationError

__all__ = ["DELAY_S", "Progress"]

DELAY_S = 2.0
"""With ``progress=True``, a bar appears only after this many seconds (short runs stay quiet)."""

_EXTRA = {"tqdm": "study", "rich": "cli"}


def _backend(progress: bool | str) -> str | None:
    if progress is False:
        return None
    if progress is True:
        for name in ("tqdm", "rich"):
            if importlib.util.find_spec(name) is not None:
                return name
        return None
    if progress not in _EXTRA:
        raise RecalibrationError(
            f"progress must be True, False, 'tqdm' or 'rich' (got {progress!r})"
        )
    if importlib.util.find_spec(progress) is None:
        raise RecalibrationError(
            f"progress={progress!r} needs the {progress} package; install it with "
            f"pip install 'bnkit[{_EXTRA[progress]}]' (or pass progress=True to use what is there)"
        )
    return progress


class Progress:
    """``with Progress(progress, total, unit, desc) as bar: bar.advance(n)``; writes to stderr.

    ``progress=True`` picks tqdm, else rich, else nothing, and waits :data:`DELAY_S` before it
    shows anything; a backend named explicitly shows from the start.
    """

    def __init__(self, progress: bool | str, total: int | None, unit: str, desc: str) -> None:
        self.backend = _backend(progress)
        self.delay = DELAY_S if progress is True else 0.0
        self.total, self.unit, self.desc = total, unit, desc
        self.done = 0
        self.start = time.monotonic()
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> Progress:
        if self.backend is not None and self.delay == 0.0:
            self._open()
        return self

    def _open(self) -> None:
        if self.backend == "tqdm":
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, unit=self.unit, desc=self.desc, file=sys.stderr)
            self.bar.update(self.done)
        else:
            from rich.console import Console
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(console=Console(stderr=True), transient=False)
            self.bar.start()
            self.task = self.bar.add_task(self.desc, total=self.total, completed=self.done)

    def advance(self, n: int) -> None:
        """Count ``n`` more units done."""
        self.done += n
        if self.bar is None:
            if self.backend is None or time.monotonic() - self.start < self.delay:
                return
            self._open()
        elif self.backend == "tqdm":
            self.bar.update(n)
        else:
            self.bar.update(self.task, advance=n)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.bar is None:
            return
        if self.backend == "tqdm":
            self.bar.close()
        else:
            self.bar.stop()
