"""Which device each worker computes on: one worker per GPU, each on its own.

:func:`assign` turns the study's ``--device`` and the GPUs torch sees into one device per
worker: ``"cuda"`` on a machine with N GPUs gives N workers on ``cuda:0`` … ``cuda:N-1`` (more
workers than GPUs take them in turn; ``"cuda:K"`` puts every worker on GPU K); on the CPU
every worker computes on ``"cpu"``. A worker process learns its device once, when it starts
(:func:`set_worker_device`), and every task it runs computes there (:func:`here`).
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

from bnkit.errors import StudyError

__all__ = ["assign", "default_workers", "here", "set_worker_device", "worker_device"]

_DEVICE: str | None = None

T = TypeVar("T")


def default_workers(device: str, gpus: int, cores: int) -> int:
    """Workers when the user names none: one per GPU on ``"cuda"``, one on ``"cuda:K"``, one
    per usable core (at most 8) on the CPU."""
    if device == "cuda":
        return max(1, gpus)
    if device.startswith("cuda:"):
        return 1
    return max(1, min(8, cores))


def assign(device: str, gpus: int, workers: int) -> list[str]:
    """The device of each of ``workers`` workers.

    Args:
        device: ``"cpu"``, ``"cuda"`` (all GPUs) or ``"cuda:K"`` (GPU K only).
        gpus: how many GPUs torch sees (``torch.cuda.device_count()``).
        workers: the number of worker processes.

    Raises:
        StudyError: a GPU was asked for and there is none, or ``cuda:K`` does not exist.
    """
    if workers < 1:
        raise StudyError(f"workers must be at least 1 (got {workers})")
    if device == "cpu":
        return ["cpu"] * workers
    if gpus < 1:
        raise StudyError(f"--device {device} was asked for, but torch sees no CUDA device")
    if device == "cuda":
        return [f"cuda:{i % gpus}" for i in range(workers)]
    index = int(device.split(":", 1)[1])
    if not 0 <= index < gpus:
        raise StudyError(f"--device {device}: torch sees {gpus} GPU(s), cuda:0 to cuda:{gpus - 1}")
    return [device] * workers


def set_worker_device(device: str | None) -> None:
    """Pin this worker process to ``device`` (``None``: use what each task names)."""
    global _DEVICE
    _DEVICE = device
    if device is not None and device.startswith("cuda:"):
        import torch

        torch.cuda.set_device(device)


def worker_device() -> str | None:
    """The device this worker process was pinned to, if any."""
    return _DEVICE


def here(spec: T) -> T:
    """``spec`` (a dataclass with a ``device`` field) on this worker's device."""
    if _DEVICE is None or getattr(spec, "device", None) == _DEVICE:
        return spec
    return dataclasses.replace(spec, device=_DEVICE)  # type: ignore[type-var]
