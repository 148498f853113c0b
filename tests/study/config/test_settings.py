"""The study's configuration: defaults, the quick grid, TOML files and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnkit.errors import StudyError
from bnkit.study.config.settings import StudyConfig


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
    assert {"mnist_to_digits", "digits_to_mnist"} <= set(d.shifts)
    assert d.finetune.steps >= 200 and len(d.finetune.lrs) >= 3 and d.finetune.warmup_steps > 0
    assert "dirichlet" in d.test_time.streams and d.test_time.stress_images >= 2000


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
        ("[test_time]\ntent_lr = -1", "test_time tent_lr must be a positive number"),
        ("[finetune]\nlrs = [1e-3, 0]", "finetune lr 0.0 must be a positive number"),
        ("[finetune]\nwarmup_steps = 300", "finetune: 0 <= warmup < steps"),
        ("[test_time]\nstreams = ['random']", "unknown streams ['random']"),
        ("[test_time]\nadapt_momentum = 0", "adapt_momentum must be in"),
        ("[verdicts]\nlevel = 1.5", "verdicts level must be in"),
        ("[pretrain]\npatience = 0", "pretrain max_steps, eval_every and patience"),
        ("shifts = ['mnist_to_fashion']", "unknown shifts ['mnist_to_fashion']"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(StudyError, match=message.replace("[", r"\[").replace("]", r"\]")):
        StudyConfig.from_toml(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="cannot read the study config"):
        StudyConfig.from_toml(tmp_path / "nope.toml")


def test_a_config_that_is_not_utf8_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes("# réglages\nseeds = 2\n".encode("latin-1"))
    with pytest.raises(StudyError, match="is not UTF-8 text"):
        StudyConfig.from_toml(path)


def test_settings_for_a_protocol_ignore_grid_axes_but_not_settings() -> None:
    base = StudyConfig()
    more = base.replace_from(
        {"seeds": 9, "shifts": ["contrast"], "test_time": {"batch_sizes": [2]}}
    )
    assert base.settings_for("test_time") == more.settings_for("test_time")
    lr = base.replace_from({"test_time": {"stress_lr": 0.5}})
    assert base.settings_for("test_time") != lr.settings_for("test_time")
    assert base.settings_for("finetune") == lr.settings_for("finetune")
    width = base.replace_from({"width": 8})
    assert base.settings_for("finetune") != width.settings_for("finetune")
    steps = base.replace_from({"finetune": {"steps": 300}})
    assert base.settings_for("finetune") != steps.settings_for("finetune")
