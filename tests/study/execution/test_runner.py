"""Running a study through the Python API: rows, files, reuse of finished cells."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bnkit.errors import StudyError
from bnkit.study import Results, StudyConfig, run
from bnkit.study.execution.cells import ROW_FIELDS


def key(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row[f] for f in ROW_FIELDS[: ROW_FIELDS.index("accuracy")])


def numbers(row: dict[str, Any]) -> dict[str, Any]:
    """A row without its timings (the only fields that differ between two computations)."""
    return {k: v for k, v in row.items() if k not in ("wall_s", "images_per_s")}


def test_the_tiny_study_has_one_row_per_cell(tiny_run: tuple[Results, Path]) -> None:
    results, out = tiny_run
    m = results.meta
    assert m["ran"] == m["cells"] == len(results.rows) and m["skipped"] == 0
    assert len({key(r) for r in results.rows}) == len(results.rows)
    assert len(list((out / "cells").glob("*.json"))) == m["cells"]
    for row in results.rows:
        assert 0.0 <= row["accuracy"] <= 1.0, row
        assert row["wall_s"] > 0 and row["images_per_s"] > 0
        if row["protocol"] == "finetune":
            assert len(row["curve"]) == 3 and row["val_accuracy"] == row["curve"][-1]
    with (out / "results.csv").open(encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(results.rows) and list(table[0]) == list(ROW_FIELDS)
    loaded = Results.load(out)
    assert len(loaded.rows) == len(results.rows)
    assert [(c["name"], c["status"]) for c in loaded.checks] == [
        (c["name"], c["status"]) for c in results.checks
    ]
    assert {(s["source"], s["model"]) for s in m["source_models"]} == {
        ("digits", "bn"),
        ("digits", "gn"),
    }
    assert len(results.checks) == 16


def test_a_rerun_skips_finished_cells_and_reruns_a_missing_one(
    tiny_run: tuple[Results, Path], tiny_toml: Path
) -> None:
    first, out = tiny_run
    config = StudyConfig.from_toml(tiny_toml)
    again = run(config, out=out, workers=1, progress=False)
    assert again.meta["ran"] == 0 and again.meta["skipped"] == len(first.rows)
    assert again.rows == first.rows
    victim = sorted((out / "cells").glob("finetune.bn.pytorch.*.json"))[0]
    assert victim.name.count("~") == 1
    before = json.loads(victim.read_text())["row"]
    victim.unlink()  # the file alone: the index still holds the row
    assert run(config, out=out, workers=1, progress=False).meta["ran"] == 0
    index = out / "cells" / "index.jsonl"
    name = victim.name.split("~")[0]
    lines = index.read_text().splitlines(keepends=True)
    index.write_text("".join(line for line in lines if f'"name":"{name}"' not in line))
    third = run(config, out=out, workers=1, progress=False)  # neither file nor line: rerun
    assert third.meta["ran"] == 1
    after = json.loads(victim.read_text())["row"]
    assert numbers(after) == numbers(before)


def test_resume_reads_the_index_and_recovers_cells_it_lost(
    tiny_run: tuple[Results, Path], tiny_toml: Path
) -> None:
    first, out = tiny_run
    config = StudyConfig.from_toml(tiny_toml)
    (out / "cells" / "index.jsonl").unlink()  # as if every writer died before its line
    again = run(config, out=out, workers=1, progress=False)
    assert again.meta["ran"] == 0 and again.meta["store"]["recovered"] == len(first.rows)
    assert [numbers(r) for r in again.rows] == [numbers(r) for r in first.rows]
    third = run(config, out=out, workers=1, progress=False)
    assert third.meta["store"] == {
        "indexed": len(first.rows), "recovered": 0, "damaged": 0, "duplicates": 0
    }  # fmt: skip


def test_a_larger_grid_reuses_the_cells_of_a_smaller_one(
    tiny_run: tuple[Results, Path], tiny_toml: Path, tmp_path: Path
) -> None:
    first, out = tiny_run
    smaller = StudyConfig.from_toml(tiny_toml).replace_from({"seeds": 1})
    one = run(smaller, out=out, workers=1, progress=False)
    assert one.meta["ran"] == 0 and len(one.rows) == len(first.rows) // 2


def test_bad_arguments_are_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="workers must be at least 1"):
        run(StudyConfig.quick(), out=tmp_path / "a", workers=0)
    with pytest.raises(StudyError, match="threads must be at least 1"):
        run(StudyConfig.quick(), out=tmp_path / "a", threads=0)
    with pytest.raises(StudyError, match="device must be auto, cpu or cuda"):
        run(StudyConfig.quick(), out=tmp_path / "a", device="tpu")
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(StudyError, match="is a file, not a folder"):
        run(StudyConfig.quick(), out=tmp_path / "file")
    assert not (tmp_path / "a").exists()


def test_importing_bnkit_does_not_import_the_study_nor_the_study_ray() -> None:
    # (tqdm is left out: torch itself imports it)
    code = (
        "import sys, bnkit; "
        "bad = [m for m in ('bnkit.study', 'sklearn', 'scipy', 'matplotlib', 'PIL', 'ray') "
        "if m in sys.modules]; "
        "import bnkit.study, bnkit.cli; bad += ['ray'] if 'ray' in sys.modules else []; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.gpu
def test_the_tiny_study_runs_on_a_gpu(
    tiny_run: tuple[Results, Path], tiny_toml: Path, tmp_path: Path
) -> None:
    cpu, _ = tiny_run
    gpu = run(StudyConfig.from_toml(tiny_toml), out=tmp_path, device="cuda", progress=False)
    assert gpu.meta["device"] == "cuda" and gpu.meta["workers"] == 1
    assert [key(r) for r in gpu.rows] == [key(r) for r in cpu.rows]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in gpu.rows)
