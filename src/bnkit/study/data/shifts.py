"""Target domains: corruptions of images in [0, 1], in numpy, at severities 1–5.

Images are arrays (N, C, H, W) of floats in [0, 1]. Every shift returns a new float32 array in
[0, 1] and is deterministic given its ``rng`` (``numpy.random.Generator``). The per-severity
parameters are CIFAR-10-C's (Hendrycks & Dietterich 2019) for the photometric and blur shifts and
ImageNet-C's for the noises (per-pixel values on [0, 1], so they do not depend on the image size;
CIFAR-10-C's noises left the study's source model above 90% at severity 5, which carries no
information); the rotation angles are MNIST-C's (Mu & Gilmer 2019). Parameters measured in pixels
(the defocus radius and its anti-aliasing blur) are scaled by ``H / 32``, since CIFAR images are
32 pixels wide; ratios (pixelation) and angles need no scaling.

=============  ==========  =====================================================  ==========
shift          family      severity 1 → 5                                          kind
=============  ==========  =====================================================  ==========
contrast       photometric factor c = .75 .5 .4 .3 .15: (x − mean)·c + mean        per image
brightness     photometric offset c = .05 .1 .15 .2 .3: clip(x + c)                 global
inversion      photometric 1 − x (one level)                                         global
gaussian_noise noise       σ = .08 .12 .18 .26 .38: clip(x + N(0, σ²))               per pixel
shot_noise     noise       λ = 60 25 12 5 3: clip(Poisson(λx)/λ)                     per pixel
impulse_noise  noise       amount = .03 .06 .09 .17 .27 of pixels set to 0 or 1      per pixel
defocus_blur   blur        disk radius .3 .4 .5 1 1.5, alias σ .4 .5 .6 .2 .1 (×H/32) per image
pixelate       blur        BOX-resize to ⌊c·H⌋ and back, c = .95 .9 .85 .75 .65        per image
rotation       spatial     ±angle (random sign) .2 .4 .6 .8 1 rad, bilinear         per image
=============  ==========  =====================================================  ==========

``rotation`` is the control: it moves no first-order pixel statistic, so adapting BatchNorm
statistics should not undo it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

__all__ = ["FAMILIES", "SHIFTS", "Shift", "apply_shift", "box_resize", "defocus_kernel", "levels"]

Array = NDArray[np.float32]
ShiftFn = Callable[[Array, int, np.random.Generator], Array]

FAMILIES = ("photometric", "noise", "blur", "spatial", "real")
"""The shift families, in report order ("real": a real dataset shift)."""


@dataclasses.dataclass(frozen=True)
class Shift:
    """A target domain: a name, its family, its function and how many severity levels it has."""

    name: str
    family: str
    fn: ShiftFn
    levels: int
    params: str


def _f32(x: NDArray[np.floating[Any]]) -> Array:
    out: Array = np.clip(x, 0.0, 1.0).astype(np.float32)
    return out


def _contrast(x: Array, severity: int, rng: np.random.Generator) -> Array:
    c = (0.75, 0.5, 0.4, 0.3, 0.15)[severity - 1]
    means = x.mean(axis=(2, 3), keepdims=True)
    return _f32((x - means) * c + means)


def _brightness(x: Array, severity: int, rng: np.random.Generator) -> Array:
    # CIFAR-10-C adds c to the HSV value channel; for a grey image that is x + c.
    c = (0.05, 0.1, 0.15, 0.2, 0.3)[severity - 1]
    return _f32(x + c)


def _inversion(x: Array, severity: int, rng: np.random.Generator) -> Array:
    return _f32(1.0 - x)


def _gaussian_noise(x: Array, severity: int, rng: np.random.Generator) -> Array:
    sigma = (0.08, 0.12, 0.18, 0.26, 0.38)[severity - 1]
    return _f32(x + rng.normal(0.0, sigma, size=x.shape))


def _shot_noise(x: Array, severity: int, rng: np.random.Generator) -> Array:
    lam = (60, 25, 12, 5, 3)[severity - 1]
    return _f32(rng.poisson(x.astype(np.float64) * lam) / lam)


def _impulse_noise(x: Array, severity: int, rng: np.random.Generator) -> Array:
    amount = (0.03, 0.06, 0.09, 0.17, 0.27)[severity - 1]
    hit = rng.random(x.shape) < amount
    salt = rng.random(x.shape) < 0.5
    return _f32(np.where(hit, salt.astype(np.float32), x))


def defocus_kernel(radius: float, alias_sigma: float) -> NDArray[np.float64]:
    """A normalized disk of ``radius`` pixels (area coverage, anti-aliased), Gaussian-smoothed.

    Each kernel tap is the fraction of its pixel covered by the disk (by 16×16 supersampling),
    so radii below one pixel still blur; the result is smoothed with a Gaussian of
    ``alias_sigma`` pixels, as CIFAR-10-C smooths its aliased disk.
    """
    half = int(np.ceil(radius + 3 * alias_sigma)) + 1
    sub = (np.arange(16) + 0.5) / 16 - 0.5
    centers = np.arange(-half, half + 1, dtype=np.float64)
    pos = (centers[:, None] + sub[None, :]).reshape(-1)
    yy, xx = np.meshgrid(pos, pos, indexing="ij")
    inside = (yy**2 + xx**2 <= radius**2).astype(np.float64)
    size = 2 * half + 1
    cover = inside.reshape(size, 16, size, 16).mean(axis=(1, 3))
    if cover.sum() == 0:
        cover[half, half] = 1.0
    kernel = ndimage.gaussian_filter(cover, alias_sigma, mode="constant")
    return np.asarray(kernel / kernel.sum(), dtype=np.float64)


def _defocus_blur(x: Array, severity: int, rng: np.random.Generator) -> Array:
    radius, alias = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))[severity - 1]
    scale = x.shape[-1] / 32
    kernel = defocus_kernel(radius * scale, alias * scale)
    return _f32(ndimage.convolve(x, kernel[None, None], mode="mirror"))


def box_resize(x: Array, height: int, width: int) -> Array:
    """(N, C, H, W) images resampled to (height, width) with Pillow's BOX filter.

    CIFAR-10-C pixelates with ``PIL.Image.resize(..., BOX)``; this is the same filter in numpy:
    each output pixel averages the input pixels whose centers fall in its footprint.
    """
    out: Array = np.einsum(
        "ih,nchw,jw->ncij", _box_matrix(x.shape[2], height), x, _box_matrix(x.shape[3], width)
    ).astype(np.float32)
    return out


def _box_matrix(src: int, dst: int) -> NDArray[np.float64]:
    """Weights (dst, src) of Pillow's BOX resampling along one axis (its coefficient rule)."""
    scale = src / dst
    filterscale = max(scale, 1.0)
    support = 0.5 * filterscale
    center = (np.arange(dst)[:, None] + 0.5) * scale
    pix = np.arange(src)[None, :]
    lo = np.maximum((center - support + 0.5).astype(int), 0)
    hi = np.minimum((center + support + 0.5).astype(int), src)
    t = (pix - center + 0.5) / filterscale
    w = ((t > -0.5) & (t <= 0.5) & (pix >= lo) & (pix < hi)).astype(np.float64)
    return np.asarray(w / w.sum(axis=1, keepdims=True), dtype=np.float64)


def _pixelate(x: Array, severity: int, rng: np.random.Generator) -> Array:
    c = (0.95, 0.9, 0.85, 0.75, 0.65)[severity - 1]
    h, w = x.shape[2], x.shape[3]
    small = box_resize(x, max(1, int(h * c)), max(1, int(w * c)))
    return _f32(box_resize(small, h, w))


def _rotation(x: Array, severity: int, rng: np.random.Generator) -> Array:
    angle = (0.2, 0.4, 0.6, 0.8, 1.0)[severity - 1]
    signs = rng.choice(np.array([-1.0, 1.0]), size=x.shape[0])
    out = np.empty_like(x)
    for sign in (-1.0, 1.0):
        idx = np.flatnonzero(signs == sign)
        if idx.size:
            out[idx] = ndimage.rotate(
                x[idx], np.degrees(sign * angle), axes=(3, 2), reshape=False, order=1, cval=0.0
            )
    return _f32(out)


SHIFTS: dict[str, Shift] = {
    s.name: s
    for s in (
        Shift("contrast", "photometric", _contrast, 5, "c = .75 .5 .4 .3 .15"),
        Shift("brightness", "photometric", _brightness, 5, "c = .05 .1 .15 .2 .3"),
        Shift("inversion", "photometric", _inversion, 1, "1 − x"),
        Shift("gaussian_noise", "noise", _gaussian_noise, 5, "σ = .08 .12 .18 .26 .38"),
        Shift("shot_noise", "noise", _shot_noise, 5, "λ = 60 25 12 5 3"),
        Shift("impulse_noise", "noise", _impulse_noise, 5, "amount = .03 .06 .09 .17 .27"),
        Shift("defocus_blur", "blur", _defocus_blur, 5, "radius .3 .4 .5 1 1.5 (×H/32)"),
        Shift("pixelate", "blur", _pixelate, 5, "c = .95 .9 .85 .75 .65"),
        Shift("rotation", "spatial", _rotation, 5, "±.2 .4 .6 .8 1 rad"),
    )
}
"""Every shift by name, in report order."""


def levels(name: str, severities: tuple[int, ...]) -> tuple[int, ...]:
    """The severities to run for shift ``name``: one-level shifts run once, at the highest."""
    if name == "none":
        return (0,)
    if SHIFTS[name].levels == 1:
        return (max(severities),)
    return severities


def apply_shift(x: Array, name: str, severity: int, rng: np.random.Generator) -> Array:
    """``x`` shifted by ``name`` at ``severity`` (1–5); ``name="none"`` returns a copy.

    Raises:
        KeyError: unknown shift name.
        ValueError: severity outside 1–5.
    """
    if name == "none":
        return x.astype(np.float32, copy=True)
    shift = SHIFTS[name]
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1 to 5 (got {severity})")
    return shift.fn(x, severity, rng)
