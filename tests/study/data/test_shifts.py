"""The target-domain shifts: their effect, their parameters, determinism, severity order."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from bnkit.study.data.shifts import SHIFTS, apply_shift, box_resize, defocus_kernel, levels


def images(n: int = 16, size: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, size, size)) * 0.6 + 0.2  # inside (0, 1): no clipping for mild shifts
    return x.astype(np.float32)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("name", list(SHIFTS))
@pytest.mark.parametrize("severity", [1, 3, 5])
def test_every_shift_keeps_shape_dtype_range_and_is_deterministic(name: str, severity: int) -> None:
    x = images()
    a = apply_shift(x, name, severity, rng(7))
    b = apply_shift(x, name, severity, rng(7))
    assert a.shape == x.shape and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.shares_memory(a, x)


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_contrast_scales_each_image_std_by_its_factor_and_keeps_the_mean(severity: int) -> None:
    x = images()
    c = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
    y = apply_shift(x, "contrast", severity, rng())
    np.testing.assert_allclose(y.std(axis=(2, 3)), c * x.std(axis=(2, 3)), rtol=1e-5)
    np.testing.assert_allclose(y.mean(axis=(2, 3)), x.mean(axis=(2, 3)), atol=1e-6)


def test_brightness_adds_its_offset_and_inversion_flips() -> None:
    x = images() * 0.8  # at most 0.64: + 0.3 stays below 1
    np.testing.assert_allclose(apply_shift(x, "brightness", 5, rng()), x + 0.3, atol=1e-6)
    np.testing.assert_allclose(apply_shift(x, "inversion", 1, rng()), 1 - x, atol=1e-6)
    twice = apply_shift(apply_shift(x, "inversion", 1, rng()), "inversion", 1, rng())
    np.testing.assert_allclose(twice, x, atol=1e-6)


def test_gaussian_noise_has_its_sigma_and_grows_with_severity() -> None:
    x = np.full((64, 1, 16, 16), 0.5, dtype=np.float32)
    stds = [float((apply_shift(x, "gaussian_noise", s, rng(s)) - x).std()) for s in range(1, 6)]
    np.testing.assert_allclose(stds[:3], [0.08, 0.12, 0.18], rtol=0.05)  # clipping above
    assert stds == sorted(stds)


def test_shot_noise_is_poisson_at_rate_lambda() -> None:
    x = np.full((64, 1, 16, 16), 0.5, dtype=np.float32)
    y = apply_shift(x, "shot_noise", 1, rng())  # lambda = 60: var = x / 60 (no clipping)
    assert abs(float(y.mean()) - 0.5) < 0.005
    assert abs(float(y.var()) - 0.5 / 60) < 0.001


@pytest.mark.parametrize(("severity", "amount"), [(1, 0.03), (5, 0.27)])
def test_impulse_noise_sets_its_share_of_pixels_to_0_or_1(severity: int, amount: float) -> None:
    x = np.full((64, 1, 16, 16), 0.5, dtype=np.float32)
    y = apply_shift(x, "impulse_noise", severity, rng())
    changed = y != x
    assert abs(float(changed.mean()) - amount) < 0.005
    assert set(np.unique(y[changed]).tolist()) == {0.0, 1.0}


def test_defocus_kernel_is_a_normalized_symmetric_disk_that_widens_with_radius() -> None:
    small, big = defocus_kernel(0.3, 0.1), defocus_kernel(1.5, 0.1)
    for k in (small, big):
        assert k.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(k, k.T, atol=1e-12)
        np.testing.assert_allclose(k, k[::-1, ::-1], atol=1e-12)
    assert small.max() > big.max()  # a larger disk spreads the weight


def test_blurs_smooth_more_at_higher_severity() -> None:
    x = images(size=32)

    def roughness(y: np.ndarray) -> float:
        return float(np.abs(np.diff(y, axis=-1)).mean())

    for name in ("defocus_blur", "pixelate"):
        r = [roughness(apply_shift(x, name, s, rng())) for s in (1, 3, 5)]
        assert roughness(x) > r[0] > r[1] > r[2], name


def test_box_resize_matches_pillows_box_filter() -> None:
    x = images(n=3, size=16)
    for h, w in ((10, 10), (13, 7), (16, 16), (24, 20)):
        ours = box_resize(x, h, w)
        for i in range(3):
            img = Image.fromarray(x[i, 0], mode="F").resize((w, h), Image.Resampling.BOX)
            np.testing.assert_allclose(ours[i, 0], np.asarray(img), atol=1e-5)


def test_box_resize_of_an_integer_factor_is_the_block_mean() -> None:
    x = images(n=2, size=8)
    want = x.reshape(2, 1, 4, 2, 4, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(box_resize(x, 4, 4), want, atol=1e-6)


def test_rotation_moves_pixels_but_keeps_the_intensity_histogram_roughly() -> None:
    x = np.zeros((2, 1, 17, 17), dtype=np.float32)
    x[:, 0, 8, 12:15] = 1.0  # a bar right of the center
    y = apply_shift(x, "rotation", 5, rng(3))  # ±1 rad
    assert y[:, 0, 8, 13].max() < 0.5  # moved away
    np.testing.assert_allclose(y.sum(axis=(1, 2, 3)), x.sum(axis=(1, 2, 3)), rtol=0.2)
    x2 = images(n=200)
    y2 = apply_shift(x2, "rotation", 1, rng())
    inner = (slice(None), slice(None), slice(5, 11), slice(5, 11))  # corners fill with 0
    assert abs(float(y2[inner].mean()) - float(x2[inner].mean())) < 0.01


def test_random_shifts_depend_on_the_generator() -> None:
    x = images()
    for name in ("gaussian_noise", "shot_noise", "impulse_noise", "rotation"):
        assert not np.array_equal(apply_shift(x, name, 5, rng(1)), apply_shift(x, name, 5, rng(2)))


def test_levels_bad_names_and_severities() -> None:
    assert levels("contrast", (1, 3, 5)) == (1, 3, 5)
    assert levels("inversion", (1, 3, 5)) == (5,)
    assert levels("none", (1, 3)) == (0,)
    np.testing.assert_array_equal(apply_shift(images(), "none", 0, rng()), images())
    with pytest.raises(ValueError, match="severity must be 1 to 5"):
        apply_shift(images(), "contrast", 6, rng())
    with pytest.raises(KeyError):
        apply_shift(images(), "fog", 1, rng())
