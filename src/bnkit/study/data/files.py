"""Images read from files only when a batch needs them: a numpy-like view over a file list.

:class:`FileImages` behaves like the (N, C, H, W) image arrays of the built-in data sets where
the study needs it to: ``len``, ``shape``, a view from a slice or an index array (``x[idx]``),
and one image as a tensor (``x[i]``: decoded with Pillow, converted to grayscale or RGB,
resized to the image size, scaled to [0, 1], then normalized by the per-channel mean and std).
It holds file names, never pixels, so a process holds the images of the batch it works on and
not the data set (:mod:`bnkit.study.data.feed` reads batches through a ``DataLoader``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from bnkit.errors import StudyError

__all__ = ["FileImages"]


class FileImages(torch.utils.data.Dataset[torch.Tensor]):
    """Image files as a lazily read (N, C, H, W) array.

    Args:
        paths: the image files, in order.
        mode: Pillow mode the images are converted to, ``"L"`` or ``"RGB"``.
        size: (height, width) every image is resized to.
        mean, std: per-channel normalization (``(x - mean) / std`` after scaling to [0, 1]);
            empty: none.
        tag: what names the files' contents (a folder's listing hash, which changes when a
            file is rewritten); part of :meth:`fingerprint`.
    """

    def __init__(
        self,
        paths: Sequence[str],
        mode: str,
        size: tuple[int, int],
        mean: Sequence[float] = (),
        std: Sequence[float] = (),
        tag: str = "",
    ) -> None:
        self.paths = np.asarray([str(p) for p in paths], dtype=object)
        self.mode = mode
        self.size = size
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.tag = tag

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.channels, *self.size)

    def __len__(self) -> int:
        return len(self.paths)

    def normalized(self, mean: Sequence[float], std: Sequence[float]) -> FileImages:
        """The same files with another normalization."""
        return FileImages(list(self.paths), self.mode, self.size, mean, std, self.tag)

    def __getitem__(self, idx: Any) -> Any:
        """One image (an int) as a float tensor (C, H, W), or a view (a slice or index array)."""
        if isinstance(idx, (int, np.integer)):
            return self._read(str(self.paths[int(idx)]))
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        out = FileImages.__new__(FileImages)
        out.paths, out.mode, out.size = self.paths[idx], self.mode, self.size
        out.mean, out.std, out.tag = self.mean, self.std, self.tag
        return out

    def _read(self, path: str) -> torch.Tensor:
        from PIL import Image

        try:
            with Image.open(path) as img:
                size = (self.size[1], self.size[0])
                converted = img.convert(self.mode).resize(size, Image.Resampling.BILINEAR)
                arr = np.asarray(converted, dtype=np.float32) / 255.0
        except OSError as err:
            raise StudyError(f"cannot read image {path!r}: {err}") from None
        x = torch.from_numpy(arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1).copy())
        if self.mean:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
            x = (x - mean) / std
        return x

    def fingerprint(self) -> str:
        """A digest of the file list, its tag, the image size and mode and the normalization."""
        blob = json.dumps([list(self.paths), self.mode, self.size, self.mean, self.std, self.tag])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
