"""The local executor: which process runs a task, on this machine.

With one worker the tasks run in this process; with more they go to a pool of spawned
processes, each with ``threads`` torch threads and its own device (one worker per GPU:
:mod:`bnkit.study.execution.devices`), that die with the study (on Linux the kernel kills a
worker whose parent died, even by SIGKILL). The workers may start processes of their own (the
``DataLoader`` workers that read image files). What a task computes does not depend on where
it runs (:mod:`bnkit.study.execution.compute`), so another executor can take this one's place.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from bnkit.study.execution.devices import set_worker_device, worker_device

__all__ = ["LocalExecutor", "usable_cores"]

_PR_SET_PDEATHSIG = 1


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _init_worker(threads: int, devices: Any) -> None:
    torch.set_num_threads(threads)
    set_worker_device(devices.get())
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class LocalExecutor:
    """``imap(fn, items)`` over this process or a spawn pool; use it as a context manager.

    Args:
        devices: one device per worker (``len(devices)`` workers).
        threads: torch threads per worker.
    """

    def __init__(self, devices: list[str], threads: int) -> None:
        self.devices = devices
        self.workers = len(devices)
        self.threads = threads
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._before: tuple[int, str | None] = (0, None)

    def __enter__(self) -> LocalExecutor:
        if self.workers <= 1:
            self._before = (torch.get_num_threads(), worker_device())
            torch.set_num_threads(self.threads)
            set_worker_device(self.devices[0] if self.devices[0] != "cpu" else None)
        else:
            ctx = multiprocessing.get_context("spawn")
            queue = ctx.Queue()
            for device in self.devices:
                queue.put(device if device != "cpu" else None)
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=ctx, initializer=_init_worker,
                initargs=(self.threads, queue),
            )  # fmt: skip
        return self

    def imap(self, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """``fn`` over ``items``, results in any order."""
        if self._pool is None:
            return map(fn, items)
        futures = [self._pool.submit(fn, item) for item in items]
        return (f.result() for f in concurrent.futures.as_completed(futures))

    def __exit__(self, kind: object, err: object, tb: object) -> None:
        if self._pool is None:
            torch.set_num_threads(self._before[0])
            set_worker_device(self._before[1])
            return
        if kind is not None:
            for process in list(getattr(self._pool, "_processes", {}).values()):
                with contextlib.suppress(OSError, AttributeError):
                    process.kill()
        self._pool.shutdown(wait=True, cancel_futures=kind is not None)
