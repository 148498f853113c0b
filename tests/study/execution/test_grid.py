"""The grid: every requested cell exactly once."""

from __future__ import annotations

from pathlib import Path

from bnkit.study.config.settings import StudyConfig
from bnkit.study.execution.bench import BenchSpec
from bnkit.study.execution.benches import make_bench
from bnkit.study.execution.cells import Cell
from bnkit.study.execution.grid import grid


def cells_of(config: StudyConfig, tmp_path: Path) -> list[Cell]:
    return grid(make_bench(BenchSpec(config, str(tmp_path), "cpu")))


def test_the_tiny_grid_cell_by_cell(tiny_toml: Path, tmp_path: Path) -> None:
    cells = cells_of(StudyConfig.from_toml(tiny_toml), tmp_path)
    assert len(set(cells)) == len(cells)
    per_seed = [c for c in cells if c.seed == 0]
    tt = [c for c in per_seed if c.protocol == "test_time"]
    # per target (none, contrast, rotation): source, adabn ×2, test_batch and prior (bs 1
    # iid; bs 64 on 3 streams) ×4 each, adapt (2 sizes × 3 streams) 6, tent on 3 streams = 20;
    # the GroupNorm twin; tent_long and tent_reset on contrast
    assert len(tt) == 3 * 20 + 3 + 2
    assert {c.n for c in tt if c.strategy == "adabn"} == {16, 0}
    assert not [c for c in tt if c.batch_size == 1 and c.stream != "iid" and c.strategy != "adapt"]
    assert {c.shift for c in tt if c.model == "gn"} == {"none", "contrast", "rotation"}
    assert {c.shift for c in tt if c.strategy in ("tent_long", "tent_reset")} == {"contrast"}
    ft = [c for c in per_seed if c.protocol == "finetune"]
    assert len(ft) == 2 * 1 * 2 * 2 * (2 + 1)  # shift × k × batch × lr × (strategies + GN)
    assert [c.protocol for c in per_seed].count("bn_only") == 1
    assert len(cells) == 2 * len(per_seed)


def test_lower_severities_get_the_core_strategies_only(tmp_path: Path) -> None:
    config = StudyConfig().replace_from({"seeds": 1, "shifts": ["contrast", "inversion"]})
    cells = [c for c in cells_of(config, tmp_path) if c.protocol == "test_time"]
    low = {(c.model, c.strategy, c.batch_size, c.stream) for c in cells if c.severity in (1, 3)}
    assert {s for _, s, _, _ in low} == {"source", "adabn", "test_batch"}
    assert ("bn", "test_batch", 64, "iid") in low and len(low) == 4
    assert {c.severity for c in cells if c.shift == "inversion"} == {5}
    sweep = {(c.strategy, c.stream) for c in cells if c.severity == 5 and c.shift == "contrast"}
    assert ("adapt", "dirichlet") in sweep and ("tent_long", "iid") in sweep


def test_the_groupnorm_twin_runs_on_the_digits_targets_only(tmp_path: Path) -> None:
    config = StudyConfig().replace_from(
        {"seeds": 1, "shifts": ["contrast", "mnist_to_digits", "digits_to_mnist"]}
    )
    gn = {c.shift for c in cells_of(config, tmp_path) if c.model == "gn"}
    assert gn == {"none", "contrast", "digits_to_mnist"}  # mnist_to_digits: an MNIST model
