"""The study's configuration: defaults, the quick grid, TOML files and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnkit.errors import StudyError
from bnkit.study.config import StudyConfig


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_default_and_quick_are_valid_and_differ() -> None:
    d, q = StudyConfig.default(), StudyConfig.quick()
    assert d.seeds >= 5 and q.seeds < d.seeds
    assert d.test_time.adabn_n[-1] is None
    assert len(q.shifts) < len(d.shifts)
    assert d.to_dict()["test_time"]["adabn_n"][-1] == "all"


def test_toml_overrides_only_what_it_sets(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'seeds = 2\nshifts = ["contrast"]\n[test_time]\nadabn_n = [8, "all"]\n'
        "prior_strength = 4\n[finetune]\nlrs = [0.01]\n",
    )
    c = StudyConfig.from_toml(path)
    assert c.seeds == 2 and c.shifts == ("contrast",)
    assert c.test_time.adabn_n == (8, None)
    assert c.test_time.prior_strength == 4.0 and isinstance(c.test_time.prior_strength, float)
    assert c.finetune.lrs == (0.01,)
    assert c.finetune.steps == StudyConfig().finetune.steps
    q = StudyConfig.from_toml(path, base=StudyConfig.quick())
    assert q.severities == StudyConfig.quick().severities


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sedes = 3", "unknown setting 'sedes'"),
        ("seeds = 'three'", "seeds must be int"),
        ("seeds = true", "seeds must be int"),
        ("shifts = ['fog']", "unknown shifts ['fog']"),
        ("[test_time]\nstrategies = ['magic']", "unknown test-time strategies"),
        ("[test_time]\nbatch_sizes = 4", "must be a list"),
        ("[finetune]\nbatch_sizes = [1]", "fine-tuning batch sizes must be >= 2"),
        ("severities = [6]", "severities are 1 to 5"),
        ("test_time = 3", "[test_time] must be a table"),
        ("seeds = [", "not valid TOML"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(StudyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        StudyConfig.from_toml(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="cannot read the study config"):
        StudyConfig.from_toml(tmp_path / "nope.toml")


def test_settings_hash_ignores_grid_axes_but_not_settings() -> None:
    base = StudyConfig()
    more = base.replace_from(
        {"seeds": 9, "shifts": ["contrast"], "test_time": {"batch_sizes": [2]}}
    )
    assert base.settings_hash("test_time") == more.settings_hash("test_time")
    lr = base.replace_from({"test_time": {"tent_lr": 0.5}})
    assert base.settings_hash("test_time") != lr.settings_hash("test_time")
    assert base.settings_hash("finetune") == lr.settings_hash("finetune")
    width = base.replace_from({"width": 8})
    assert base.settings_hash("finetune") != width.settings_hash("finetune")
