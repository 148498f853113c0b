"""``--shard I/N`` and ``collect``: parts that together are one run, and parts refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from bnkit.cli import main
from bnkit.errors import StudyError
from bnkit.study import Results, StudyConfig, collect, run
from bnkit.study.execution.parts import parse_shard, select


def numbers(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("wall_s", "images_per_s")}


MICRO = {
    "seeds": 2, "image_size": 8, "width": 4, "shifts": ["contrast"], "severities": [5],
    "pretrain": {"max_steps": 20, "eval_every": 10, "warmup_steps": 2},
    "test_time": {"strategies": ["source", "adabn", "test_batch", "tent"], "adabn_n": [16, "all"],
                  "batch_sizes": [4, 64], "streams": ["iid", "sorted"]},
    "finetune": {"strategies": ["pytorch", "frozen_stats"], "shifts": ["contrast"], "shots": [5],
                 "batch_sizes": [4], "steps": 3, "warmup_steps": 1, "lrs": [1e-2],
                 "curve_points": 2},
    "bn_only": {"steps": 5},
}  # fmt: skip


@pytest.fixture(scope="module")
def micro(tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyConfig, Path]:
    root = tmp_path_factory.mktemp("parts")
    return StudyConfig().replace_from(MICRO), root


@pytest.fixture(scope="module")
def full(micro: tuple[StudyConfig, Path]) -> Results:
    """A small grid run whole (sharing the parts' source-model cache)."""
    config, root = micro
    return run(config, out=root / "full", workers=1, cache=root / "cache", progress=False)


@pytest.fixture(scope="module")
def parts(micro: tuple[StudyConfig, Path], full: Results) -> list[Path]:
    """The same grid run as two shards."""
    config, root = micro
    out = []
    for i in range(2):
        folder = root / f"part{i}"
        run(config, out=folder, workers=1, cache=root / "cache", shard=f"{i}/2", progress=False)
        out.append(folder)
    return out


def test_shard_arguments_are_checked() -> None:
    assert parse_shard(None) == (0, 1) and parse_shard("2/3") == (2, 3)
    for bad in ("3/3", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(StudyError, match="--shard must be I/N"):
            parse_shard(bad)
    tasks = list(range(7))
    split = [select(tasks, (i, 3)) for i in range(3)]
    assert sorted(t for s in split for t in s) == tasks and split[1] == [1, 4]


def test_two_shards_collected_equal_one_full_run(
    parts: list[Path], full: Results, tmp_path: Path
) -> None:
    halves = [Results.load(p) for p in parts]
    assert [h.meta["shard"] for h in halves] == [[0, 2], [1, 2]] and not halves[0].checks
    assert sum(len(h.rows) for h in halves) == len(full.rows)
    assert all(0 < len(h.rows) < len(full.rows) for h in halves)
    merged = collect(list(reversed(parts)), out=tmp_path / "merged")
    assert [numbers(r) for r in merged.rows] == [numbers(r) for r in full.rows]
    assert merged.checks == full.checks

    def models(r: Results) -> list[tuple[Any, ...]]:
        return [
            (m["source"], m["model"], m["seed"], m["val_accuracy"]) for m in r.meta["source_models"]
        ]

    assert models(merged) == models(full)
    assert len(Results.load(tmp_path / "merged").rows) == len(full.rows)


def test_collect_on_the_command_line(
    parts: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["study", "collect", *map(str, parts), "--out", str(tmp_path / "m")])
    text = capsys.readouterr().out
    assert code == 0 and "from 2 part(s)" in text and (tmp_path / "m" / "report.html").exists()


def _copy(part: Path, dest: Path) -> Path:
    shutil.copytree(part, dest)
    return dest


def _edit(part: Path, change: Any) -> None:
    data = json.loads((part / "part.json").read_text())
    change(data)
    (part / "part.json").write_text(json.dumps(data))


def test_collect_refuses_parts_of_different_studies(parts: list[Path], tmp_path: Path) -> None:
    other = _copy(parts[1], tmp_path / "other")
    _edit(other, lambda d: d["fingerprint"]["settings"]["finetune"].update(steps=5))
    with pytest.raises(StudyError, match=r"parts of different studies \(settings.finetune.steps"):
        collect([parts[0], other], out=tmp_path / "m")
    _edit(other, lambda d: d["fingerprint"]["run"].update(bnkit="0.0.1"))
    with pytest.raises(StudyError, match=r"run.bnkit: \"0.0.1\" vs"):
        collect([other, parts[0]], out=tmp_path / "m")


def test_collect_refuses_a_missing_repeated_or_unfinished_part(
    parts: list[Path], tmp_path: Path
) -> None:
    with pytest.raises(StudyError, match="parts 1/2 are missing"):
        collect([parts[0]], out=tmp_path / "m")
    with pytest.raises(StudyError, match="part 0/2 is named twice"):
        collect([parts[0], parts[0], parts[1]], out=tmp_path / "m")
    with pytest.raises(StudyError, match=r"holds no part\.json"):
        collect([parts[0], tmp_path], out=tmp_path / "m")
    half = _copy(parts[1], tmp_path / "half")
    shutil.rmtree(half / "cells")
    with pytest.raises(StudyError, match=r"part 1/2 in .* has not finished"):
        collect([parts[0], half], out=tmp_path / "m")
