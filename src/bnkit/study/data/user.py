"""Reading the user's data: an image-folder tree or a ``package.module:function`` factory.

An image-folder tree::

    DIR/source/<class>/*.png      the domain the model was (or will be) trained on
    DIR/target/<class>/*.png      the shifted domain (same class names)

is listed, not loaded: the images are :class:`~bnkit.study.data.files.FileImages`, decoded with
Pillow only when a batch needs them (grayscale when every image is, else RGB; resized to
``image_size`` or to the first source image's size; scaled to [0, 1], then normalized); class
``i`` is the ``i``-th class folder in sorted order. :func:`statistics` computes the per-channel
mean and std of the source images in one streamed pass. A factory returns
``(source_dataset, target_dataset)``, each a sequence of ``(image tensor (C, H, W), label)``,
which are kept in memory; its labels are kept as given (see
:func:`bnkit.study.models.user.output_labels` for how they must relate to the model's outputs).
Every problem is a :class:`~bnkit.errors.StudyError` that names the folder, file or factory
and says what was expected. :func:`identity` names the data for the cells' keys.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bnkit.errors import StudyError
from bnkit.study.data.domain import Domain, fingerprint
from bnkit.study.data.files import FileImages

__all__ = [
    "IMAGE_SUFFIXES",
    "from_factory",
    "identity",
    "is_folder",
    "listing_hash",
    "load_factory",
    "load_folders",
    "statistics",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def load_factory(spec: str, what: str) -> Any:
    """The object named by ``"package.module:name"`` (the current folder is importable)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise StudyError(f"{what} must be written package.module:function (got {spec!r})")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise StudyError(f"{what} {spec!r}: cannot import {module_name!r} ({err})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise StudyError(f"{what} {spec!r}: module {module_name!r} has no {attr!r}") from None


def _classes(folder: Path) -> dict[str, list[Path]]:
    if not folder.is_dir():
        raise StudyError(
            f"expected the folder {str(folder)!r}: --data DIR needs DIR/source/<class>/*.png and "
            "DIR/target/<class>/*.png"
        )
    out = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(p for p in sub.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise StudyError(
                f"class folder {str(sub)!r} has no images ({', '.join(IMAGE_SUFFIXES)})"
            )
        out[sub.name] = files
    if not out:
        raise StudyError(f"{str(folder)!r} has no class folders (expected {folder}/<class>/*.png)")
    return out


def load_folders(
    root: str | Path, image_size: int | None = None
) -> tuple[Domain, Domain, list[str]]:
    """Source and target domains from an image-folder tree, and the class names.

    Raises:
        StudyError: a missing folder, no or empty class folders, class names that differ
            between source and target, or an image Pillow cannot read.
    """
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise StudyError(f"data folder {str(root)!r} does not exist")
    src, tgt = _classes(root / "source"), _classes(root / "target")
    if set(src) != set(tgt):
        only_s, only_t = sorted(set(src) - set(tgt)), sorted(set(tgt) - set(src))
        raise StudyError(
            f"source and target must have the same class folders; only in source: {only_s}, "
            f"only in target: {only_t}"
        )
    names = sorted(src)
    modes = {}
    for files in (*src.values(), *tgt.values()):
        for path in files:
            try:
                with Image.open(path) as img:  # reads the header, not the pixels
                    modes[path] = img.mode
                    if path == src[names[0]][0]:
                        first = img.size
            except OSError as err:
                raise StudyError(f"cannot read image {str(path)!r}: {err}") from None
    gray = all(m in ("1", "L", "LA", "I", "I;16", "F") for m in modes.values())
    width, height = (image_size, image_size) if image_size else first
    tag = listing_hash(root)

    def domain(classes: dict[str, list[Path]]) -> Domain:
        pairs = [(str(p), label) for label, name in enumerate(names) for p in classes[name]]
        x = FileImages([p for p, _ in pairs], "L" if gray else "RGB", (height, width), tag=tag)
        return Domain(x, np.asarray([y for _, y in pairs], dtype=np.int64))

    return domain(src), domain(tgt), names


def statistics(
    images: FileImages, workers: int = 0, batch_size: int = 256
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of ``images`` (before normalization), in one streamed pass."""
    plain = images.normalized((), ())
    loader = torch.utils.data.DataLoader(plain, batch_size=batch_size, num_workers=workers)
    total = torch.zeros(plain.channels, dtype=torch.float64)
    squares = torch.zeros_like(total)
    count = 0
    for batch in loader:
        x = batch.double().transpose(0, 1).reshape(plain.channels, -1)
        total += x.sum(dim=1)
        squares += (x * x).sum(dim=1)
        count += x.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-6)
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def from_factory(spec: str) -> tuple[Domain, Domain, list[str]]:
    """Source and target domains from a data factory, and the class names (its labels).

    Raises:
        StudyError: the factory fails, returns something else than two datasets of
            (C, H, W) images with integer labels, or source and target labels differ.
    """
    try:
        made = load_factory(spec, "--data")()
    except StudyError:
        raise
    except Exception as err:
        raise StudyError(f"--data {spec!r} failed: {type(err).__name__}: {err}") from None
    if not (isinstance(made, (tuple, list)) and len(made) == 2):
        raise StudyError(f"--data {spec!r} must return (source_dataset, target_dataset)")

    def domain(ds: Any, which: str) -> Domain:
        try:
            pairs = [(torch.as_tensor(x, dtype=torch.float32), int(y)) for x, y in ds]
        except (TypeError, ValueError) as err:
            raise StudyError(
                f"--data {spec!r}: the {which} dataset must hold (image tensor, label) pairs "
                f"({err})"
            ) from None
        if not pairs:
            raise StudyError(f"--data {spec!r}: the {which} dataset is empty")
        shapes = {tuple(x.shape) for x, _ in pairs}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3:
            raise StudyError(
                f"--data {spec!r}: {which} images must all be (C, H, W); got {sorted(shapes)[:3]}"
            )
        x = torch.stack([x for x, _ in pairs]).numpy().astype(np.float32)
        return Domain(x, np.asarray([y for _, y in pairs], dtype=np.int64))

    source, target = domain(made[0], "source"), domain(made[1], "target")
    if set(source.y.tolist()) != set(target.y.tolist()):
        raise StudyError(
            f"--data {spec!r}: source labels {sorted(set(source.y.tolist()))} and target labels "
            f"{sorted(set(target.y.tolist()))} differ"
        )
    return source, target, [str(c) for c in sorted(set(source.y.tolist()))]


def is_folder(data: str) -> bool:
    """Whether ``--data`` names a folder (else a ``package.module:function`` factory)."""
    return Path(data).is_dir() or ":" not in data


def listing_hash(root: str | Path) -> str:
    """A digest of a data folder's listing: every file's relative path, size and mtime.

    Adding, removing, renaming, rewriting or touching an image changes it; reading the
    images is not needed.
    """
    root = Path(root)
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        st = path.stat()
        entries.append([path.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()[:16]


def identity(data: str, source: Domain, target: Domain) -> dict[str, object]:
    """What names the user's data in a cell's key: a folder's listing hash, or the
    factory's name with the sizes and a digest of what it returned."""
    sizes = [len(source), len(target), list(source.x.shape[1:])]
    if isinstance(source.x, FileImages):
        return {"folder": str(Path(data).resolve()), "listing": source.x.tag, "sizes": sizes}
    return {"factory": data, "sizes": sizes, "digest": fingerprint(source) + fingerprint(target)}
