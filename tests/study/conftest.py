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
max_steps = 40
eval_every = 20
warmup_steps = 5

[test_time]
adabn_n = [16, "all"]
batch_sizes = [1, 64]
streams = ["iid", "sorted", "dirichlet"]
stress_images = 400
stress_shifts = ["contrast"]

[finetune]
strategies = ["pytorch", "frozen_stats"]
shifts = ["none", "contrast"]
shots = [5]
batch_sizes = [2, 8]
steps = 4
warmup_steps = 1
lrs = [1e-3, 1e-2]
curve_points = 3

[bn_only]
steps = 10
"""
"""A grid small enough for a test: about 200 cells, a few seconds."""


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
