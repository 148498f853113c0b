"""The user's images at scale: streamed from the folder, normalized, with the same numbers as
the same images held in memory; mixed precision, channels-last and loader processes."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.study.execution.userdata import make_tree

from bnkit.study import StudyConfig, UserSpec, render, run
from bnkit.study.data.files import FileImages
from bnkit.study.execution.bench import BenchSpec
from bnkit.study.execution.benches import make_bench

CONFIG: dict[str, Any] = {
    "seeds": 2,
    "width": 4,
    "pretrain": {"max_steps": 20, "eval_every": 10, "warmup_steps": 2, "batch_size": 16,
                 "eval_batch_size": 7},
    "test_time": {"strategies": ["source", "adabn", "test_batch", "tent"], "adabn_n": [4, "all"],
                  "batch_sizes": [8], "streams": ["iid"], "eval_batch_size": 5,
                  "stats_batch_size": 3, "tent_batch_size": 8},
    "finetune": {"shots": [5], "batch_sizes": [4], "steps": 3, "warmup_steps": 1, "lrs": [1e-2],
                 "curve_points": 2, "strategies": ["pytorch", "adabn_finetune"],
                 "eval_batch_size": 6, "stats_batch_size": 4},
    "groupnorm": False,
}  # fmt: skip

FACTORY = """
from pathlib import Path
import numpy as np
import torch
from PIL import Image

ROOT = Path({root!r})


def _domain(name):
    out = []
    for label, folder in enumerate(sorted(p for p in (ROOT / name).iterdir() if p.is_dir())):
        for path in sorted(folder.iterdir()):
            with Image.open(path) as img:
                arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
            out.append((torch.from_numpy(arr[None].copy()), label))
    return out


def same_images():
    return _domain("source"), _domain("target")
"""


def numbers(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("wall_s", "images_per_s")}


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    data = make_tree(tmp_path / "data")
    (tmp_path / "bnkit_same_images.py").write_text(FACTORY.format(root=str(data)))
    sys.path.insert(0, str(tmp_path))
    yield data
    sys.path.remove(str(tmp_path))
    sys.modules.pop("bnkit_same_images", None)


def test_streamed_folders_give_the_numbers_of_the_same_images_in_memory(
    tree: Path, tmp_path: Path
) -> None:
    config = StudyConfig().replace_from(CONFIG)
    streamed = run(config, out=tmp_path / "a", workers=1, user=UserSpec(None, str(tree)),
                   progress=False)  # fmt: skip
    memory = run(config, out=tmp_path / "b", workers=1,
                 user=UserSpec(None, "bnkit_same_images:same_images"), progress=False)  # fmt: skip
    assert len(streamed.rows) == len(memory.rows) > 10
    assert [numbers(r) for r in streamed.rows] == [numbers(r) for r in memory.rows]
    norm = streamed.meta["normalization"]
    assert norm == memory.meta["normalization"] and len(norm["mean"]) == 1
    assert streamed.config["data"]["mean"] == norm["mean"]  # recorded with the settings
    report = render(streamed, tmp_path / "a").with_suffix(".md").read_text(encoding="utf-8")
    assert f"normalized by mean {norm['mean']}" in report
    assert len(list((tmp_path / "a" / "cache").glob("normalization-*.json"))) == 1


def test_the_bench_holds_file_names_not_pixels(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = []
    original = FileImages._read
    monkeypatch.setattr(FileImages, "_read", lambda self, p: reads.append(p) or original(self, p))
    given = {**CONFIG, "data": {"mean": [0.5], "std": [0.2]}}
    config = StudyConfig().replace_from(given)
    spec = BenchSpec(config, str(tmp_path / "cache"), "cpu", UserSpec(None, str(tree)), "x")
    bench = make_bench(spec)
    pool = bench.parts(0, "target", 0)[0]
    assert isinstance(bench.source.x, FileImages) and isinstance(pool.x, FileImages)  # type: ignore[attr-defined]
    assert len(reads) == 0  # nothing decoded to build the bench (the mean and std are given)
    assert bench.config.data.mean == (0.5,)


def test_normalization_is_part_of_every_cells_key(tree: Path, tmp_path: Path) -> None:
    small = {**CONFIG, "finetune": {"strategies": []}}
    config = StudyConfig().replace_from(small)
    user = UserSpec(None, str(tree))
    first = run(config, out=tmp_path / "o", workers=1, user=user, progress=False)
    same = run(config.replace_from({"data": {"mean": first.meta["normalization"]["mean"],
               "std": first.meta["normalization"]["std"]}}), out=tmp_path / "o", workers=1,
               user=user, progress=False)  # fmt: skip
    assert same.meta["ran"] == 0  # the computed values, given: the same cells
    other = run(config.replace_from({"data": {"mean": [0.3], "std": [0.2]}}), out=tmp_path / "o",
                workers=1, user=user, progress=False)  # fmt: skip
    assert other.meta["ran"] == other.meta["cells"] > 0


def test_mixed_precision_channels_last_and_loader_processes(tree: Path, tmp_path: Path) -> None:
    extra = {"data": {"mixed_precision": True, "channels_last": True, "loader_workers": 1}}
    small = {**CONFIG, **extra, "seeds": 1}
    config = StudyConfig().replace_from(small)
    got = run(config, out=tmp_path / "o", workers=1, user=UserSpec(None, str(tree)),
              progress=False)  # fmt: skip
    assert got.meta["feed"] == {"loader_workers": 1, "mixed_precision": True,
                                "channels_last": True}  # fmt: skip
    assert all(np.isfinite(r["accuracy"]) and 0 <= r["accuracy"] <= 1 for r in got.rows)
    report = render(got, tmp_path / "o").with_suffix(".md").read_text(encoding="utf-8")
    assert "Computed with mixed precision and channels last." in report
    plain = run(config.replace_from({"data": {"mixed_precision": False}}), out=tmp_path / "o",
                workers=1, user=UserSpec(None, str(tree)), progress=False)  # fmt: skip
    assert plain.meta["ran"] == plain.meta["cells"]  # another precision: other cells
