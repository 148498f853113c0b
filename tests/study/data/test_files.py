"""Image files read on demand: views, decoding, normalization, the streamed feed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bnkit.errors import StudyError
from bnkit.study.data import user
from bnkit.study.data.feed import Feed, Streamed, gathered, head, in_batches
from bnkit.study.data.files import FileImages


def images(folder: Path, n: int = 10, mode: str = "L") -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        shape = (6, 5) if mode == "L" else (6, 5, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(
            folder / f"{i}.png"
        )
        paths.append(folder / f"{i}.png")
    return paths


def decoded(path: Path, size: tuple[int, int] = (6, 5)) -> np.ndarray:
    with Image.open(path) as img:
        arr = np.asarray(img.convert("L").resize(size[::-1], Image.Resampling.BILINEAR))
    return arr.astype(np.float32)[None] / 255.0


def test_file_images_behave_like_an_image_array(tmp_path: Path) -> None:
    paths = images(tmp_path)
    x = FileImages(paths, "L", (6, 5), mean=[0.5], std=[0.25])
    assert x.shape == (10, 1, 6, 5) and len(x) == 10
    np.testing.assert_array_equal(x[3].numpy(), (decoded(paths[3]) - 0.5) / 0.25)
    view = x[np.asarray([7, 2])]
    assert isinstance(view, FileImages) and view.shape == (2, 1, 6, 5)
    torch.testing.assert_close(view[0], x[7], rtol=0, atol=0)
    assert x[2:4].shape[0] == 2 and x[torch.tensor([1])].shape[0] == 1
    assert x.fingerprint() != x.normalized([0.4], [0.25]).fingerprint()
    assert x.fingerprint() != FileImages(paths, "L", (6, 5), [0.5], [0.25], tag="t").fingerprint()
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(StudyError, match="cannot read image"):
        FileImages([tmp_path / "bad.png"], "L", (6, 5))[0]


@pytest.mark.parametrize("workers", [0, 1])
def test_streamed_batches_equal_the_in_memory_ones(tmp_path: Path, workers: int) -> None:
    paths = images(tmp_path, 9)
    files = FileImages(paths, "L", (6, 5))
    memory = torch.from_numpy(np.stack([decoded(p) for p in paths]))
    streamed = Feed(torch.device("cpu"), workers=workers).images(files)
    assert isinstance(streamed, Streamed) and len(streamed) == 9
    for a, b in zip(in_batches(streamed, 4), in_batches(memory, 4), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    order = [torch.tensor([8, 0, 3]), torch.tensor([1])]
    for a, b in zip(gathered(streamed, order), gathered(memory, order), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [len(b) for b in in_batches(streamed[2:], 3)] == [3, 3, 1]
    torch.testing.assert_close(Feed(torch.device("cpu")).resident(files, 4), memory, rtol=0, atol=0)
    torch.testing.assert_close(head(files, 2), memory[:2], rtol=0, atol=0)


def test_channels_last_and_autocast_are_applied() -> None:
    feed = Feed(torch.device("cpu"), channels_last=True, mixed_precision=True)
    x = feed.images(np.zeros((2, 3, 4, 4), dtype=np.float32))
    assert isinstance(x, torch.Tensor) and x.is_contiguous(memory_format=torch.channels_last)
    model = feed.place(torch.nn.Conv2d(3, 2, 1))
    assert model.weight.is_contiguous(memory_format=torch.channels_last)
    with feed.autocast():
        assert model(x).dtype == torch.bfloat16
    with Feed(torch.device("cpu")).autocast():
        assert model(x).dtype == torch.float32


def test_source_statistics_are_computed_in_one_streamed_pass(tmp_path: Path) -> None:
    paths = images(tmp_path, 7, mode="RGB")
    files = FileImages(paths, "RGB", (6, 5), mean=[9, 9, 9], std=[9, 9, 9])
    mean, std = user.statistics(files, batch_size=3)  # without the normalization it holds
    pixels = np.stack([FileImages(paths, "RGB", (6, 5))[i].numpy() for i in range(7)])
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 2, 3)), atol=1e-6)
