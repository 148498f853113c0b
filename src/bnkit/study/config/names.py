"""The names a study setting may use: shifts, strategies, stream orders."""

from __future__ import annotations

__all__ = ["FINETUNE_STRATEGIES", "REAL", "STREAMS", "SYNTHETIC", "TEST_TIME_STRATEGIES"]

SYNTHETIC: tuple[str, ...] = (
    "contrast",
    "brightness",
    "inversion",
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "pixelate",
    "rotation",
)
"""The synthetic shifts of the digits, in report order."""
REAL: tuple[str, ...] = ("mnist_to_digits", "digits_to_mnist")
"""The real dataset shifts: train on one handwriting data set, adapt to the other."""


TEST_TIME_STRATEGIES = (
    "source",
    "adabn",
    "test_batch",
    "prior",
    "adapt",
    "tent",
    "tent_long",
    "tent_reset",
)
FINETUNE_STRATEGIES = (
    "pytorch",
    "frozen_affine",
    "frozen_stats",
    "frozen",
    "bn_only",
    "adabn_finetune",
    "renorm",
    "ghost",
)
STREAMS = ("iid", "sorted", "dirichlet")
