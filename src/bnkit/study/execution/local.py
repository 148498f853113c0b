"""The local executor: which process runs a task, on this machine.

With one worker the tasks run in this process; with more they go to a pool of spawned
processes, each with ``threads`` torch threads, that die with the study (on Linux the kernel
kills a worker whose parent died, even by SIGKILL). What a task computes does not depend on
where it runs (:mod:`bnkit.study.execution.compute`), so another executor can take this one's
place.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

__all__ = ["LocalExecutor", "usable_cores"]

_PR_SET_PDEATHSIG = 1


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class LocalExecutor:
    """``imap(fn, items)`` over this process or a spawn pool; use it as a context manager."""

    def __init__(self, workers: int, threads: int) -> None:
        self.workers = workers
        self.threads = threads
        self._pool: Any = None
        self._threads_before = 0

    def __enter__(self) -> LocalExecutor:
        if self.workers <= 1:
            self._threads_before = torch.get_num_threads()
            torch.set_num_threads(self.threads)
        else:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ctx.Pool(self.workers, initializer=_init_worker, initargs=(self.threads,))
        return self

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """``fn`` over ``items``, results in any order."""
        if self._pool is None:
            return map(fn, items)
        return iter(self._pool.imap_unordered(fn, list(items)))

    def __exit__(self, kind: object, err: object, tb: object) -> None:
        if self._pool is None:
            torch.set_num_threads(self._threads_before)
            return
        if kind is None:
            self._pool.close()
        else:
            self._pool.terminate()
        self._pool.join()
