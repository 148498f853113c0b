"""A user's model module and image folders, written for the tests that need them."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

MODELS = """
import torch
import torch.nn as nn


def bn_net():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2),
    )


def wide_net():
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2),
    )


def no_bn():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 2))


def not_a_module():
    return "a string"


def one_output():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(1))


def broken():
    raise RuntimeError("cannot build")


def _pairs(offset, labels):
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(48):
        label = labels[i % 2]
        out.append((torch.rand(1, 8, 8, generator=g) * 0.5 + offset * (i % 2), label))
    return out


def datasets():
    return _pairs(0.3, (0, 1)), _pairs(0.1, (0, 1))


def three_and_seven():
    return _pairs(0.3, (3, 7)), _pairs(0.1, (3, 7))
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("models")
    (folder / "bnkit_user_models.py").write_text(MODELS, encoding="utf-8")
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("bnkit_user_models", None)


def make_tree(root: Path, classes: dict[str, tuple[str, ...]] | None = None, n: int = 24) -> Path:
    rng = np.random.default_rng(0)
    classes = classes or {"source": ("cat", "dog"), "target": ("cat", "dog")}
    for domain, names in classes.items():
        for label, name in enumerate(names):
            folder = root / domain / name
            folder.mkdir(parents=True)
            for i in range(n):
                base = 60 + 120 * label + (40 if domain == "target" else 0)
                pixels = np.clip(rng.normal(base, 20, (8, 8)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    return root
