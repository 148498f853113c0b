"""The grid: every requested cell exactly once."""

from __future__ import annotations

from pathlib import Path

from bnkit.study.bench import BenchSpec, make_bench
from bnkit.study.config import StudyConfig
from bnkit.study.grid import grid


def cells_of(config: StudyConfig, tmp_path: Path) -> list:
    return grid(make_bench(BenchSpec(config, str(tmp_path), "cpu")))


def test_the_tiny_grid_cell_by_cell(tiny_toml: Path, tmp_path: Path) -> None:
    cells = cells_of(StudyConfig.from_toml(tiny_toml), tmp_path)
    assert len(set(cells)) == len(cells)
    per_seed = [c for c in cells if c.seed == 0]
    tt = [c for c in per_seed if c.protocol == "test_time"]
    # 3 targets (none, contrast, rotation), all at the sweep severity: gn source, source,
    # adabn ×2, test_batch and prior (bs 1 iid; bs 64 iid and sorted) ×3 each, tent on both
    # streams, tent_stress = 13
    assert len(tt) == 3 * 13
    assert {c.n for c in tt if c.strategy == "adabn"} == {16, 360}
    assert not [c for c in tt if c.batch_size == 1 and c.stream == "sorted"]
    ft = [c for c in per_seed if c.protocol == "finetune"]
    assert len(ft) == 1 * 1 * 2 * 1 * (2 + 1)  # shift × k × batch × lr × (strategies + GN)
    assert [c.protocol for c in per_seed].count("bn_only") == 1
    assert len(cells) == 2 * len(per_seed)


def test_lower_severities_get_the_core_strategies_only(tmp_path: Path) -> None:
    config = StudyConfig().replace_from({"seeds": 1, "shifts": ["contrast", "inversion"]})
    cells = [c for c in cells_of(config, tmp_path) if c.protocol == "test_time"]
    low = {(c.strategy, c.batch_size, c.stream) for c in cells if c.severity in (1, 3)}
    assert {s for s, _, _ in low} == {"source", "adabn", "test_batch", "tent"}
    assert ("test_batch", 64, "iid") in low and len(low) == 4
    assert {c.severity for c in cells if c.shift == "inversion"} == {5}
    sweep = {(c.strategy, c.stream) for c in cells if c.severity == 5 and c.shift == "contrast"}
    assert ("adapt", "sorted") in sweep and ("tent_stress", "iid") in sweep
