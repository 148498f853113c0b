"""How images reach the model: in-memory tensors, or files streamed through a ``DataLoader``.

A :class:`Feed` names the device and how batches get there: ``DataLoader`` worker processes
for images read from files, pinned memory when the device is a GPU, channels-last memory
format, and ``torch.autocast`` (bfloat16) around the computation. :meth:`Feed.images` turns a
part of a data set into what the training and prediction loops take: a tensor on the device
(the built-in data sets, which stay in memory), or a :class:`Streamed` view of image files that
is read batch by batch, so memory is bounded by the batch and not by the data set.
:func:`in_batches` and :func:`gathered` iterate either kind the same way; on a tensor they
slice it exactly as the loops always did, so in-memory results do not change.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from bnkit.study.data.files import FileImages

__all__ = ["Feed", "Images", "Streamed", "gathered", "head", "in_batches", "length"]


@dataclasses.dataclass(frozen=True)
class Feed:
    """Where and how batches reach the model.

    Attributes:
        device: the device the model computes on.
        workers: ``DataLoader`` worker processes that read image files (0: in this process).
        channels_last: the model and its inputs in channels-last memory format.
        mixed_precision: compute under ``torch.autocast`` in bfloat16 (no loss scaling needed).
    """

    device: torch.device
    workers: int = 0
    channels_last: bool = False
    mixed_precision: bool = False

    def place(self, model: nn.Module) -> nn.Module:
        """Move ``model`` to the device (and the memory format)."""
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return model

    def to_device(self, x: Tensor) -> Tensor:
        """A batch on the device (asynchronously from pinned memory) in the memory format."""
        x = x.to(self.device, non_blocking=x.is_pinned())
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def images(self, x: Any) -> Images:
        """An image array (numpy, in memory) as a tensor on the device, or image files
        (:class:`~bnkit.study.data.files.FileImages`) as a :class:`Streamed` view."""
        if isinstance(x, FileImages):
            return Streamed(x, self)
        return self.to_device(torch.from_numpy(np.ascontiguousarray(x)))

    def resident(self, x: Any, chunk: int = 256) -> Tensor:
        """A small set of images (a few-shot training set) as one tensor on the device, read
        once instead of once per step."""
        images = self.images(x)
        if isinstance(images, Tensor):
            return images
        return torch.cat(list(in_batches(images, chunk)))

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast`` in bfloat16 on the device, or nothing."""
        if not self.mixed_precision:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


class Streamed:
    """Image files read in batches through a ``DataLoader``, delivered on a feed's device."""

    def __init__(self, files: FileImages, feed: Feed) -> None:
        self.files = files
        self.feed = feed

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.files.shape

    def __getitem__(self, idx: Any) -> Streamed:
        """A view (a slice or index array), read lazily as well."""
        return Streamed(self.files[idx], self.feed)

    def batches(self, index_batches: Sequence[Sequence[int]]) -> Iterator[Tensor]:
        """The images of each index batch, in that order, on the device."""
        loader = torch.utils.data.DataLoader(
            self.files,
            batch_sampler=[[int(i) for i in b] for b in index_batches],
            num_workers=self.feed.workers,
            pin_memory=self.feed.device.type == "cuda",
        )
        for batch in loader:
            yield self.feed.to_device(batch)


Images = Tensor | Streamed
"""What the loops take: a tensor on the device, or streamed image files."""


def length(x: Images) -> int:
    return int(x.shape[0])


def in_batches(x: Images, size: int) -> Iterator[Tensor]:
    """``x`` in consecutive batches of ``size`` (the last may be smaller)."""
    n = length(x)
    if isinstance(x, Tensor):
        for i in range(0, n, size):
            yield x[i : i + size]
        return
    yield from x.batches([range(i, min(i + size, n)) for i in range(0, n, size)])


def gathered(x: Images, index_batches: Sequence[Tensor]) -> Iterator[Tensor]:
    """The samples of each index batch of ``x``, in order."""
    if isinstance(x, Tensor):
        for idx in index_batches:
            yield x[idx.to(x.device)]
        return
    yield from x.batches([idx.tolist() for idx in index_batches])


def head(x: Any, n: int) -> Tensor:
    """The first ``n`` images of an array or of image files, as a CPU tensor."""
    if isinstance(x, FileImages):
        return torch.stack([x[i] for i in range(min(n, len(x)))])
    return torch.from_numpy(np.ascontiguousarray(x[:n]))
