"""Shared pieces of the study tests: a tiny grid, and one tiny study run reused by many tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")

TINY_TOML = """
seeds = 2
image_size = 8
width = 4
shifts = ["contrast", "rotation"]
severities = [5]

[pretrain]
epochs = 2

[test_time]
strategies = ["source", "adabn", "test_batch", "prior", "tent", "tent_stress"]
adabn_n = [16, "all"]
batch_sizes = [1, 64]
stress_passes = 2

[finetune]
strategies = ["pytorch", "frozen_stats"]
shifts = ["contrast"]
shots = [5]
batch_sizes = [2, 8]
steps = 3
lrs = [1e-3]

[bn_only]
epochs = 1
"""
"""A grid small enough for a test: about 80 cells, a few seconds."""


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread, as the study's workers use: small models run fastest so."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_toml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("grid") / "tiny.toml"
    path.write_text(TINY_TOML, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_run(tiny_toml: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Path]:
    """(Results, output folder) of the tiny grid, run in this process."""
    from bnkit.study import StudyConfig, run

    out = tmp_path_factory.mktemp("study")
    results = run(StudyConfig.from_toml(tiny_toml), out=out, workers=1, progress=False)
    return results, out
