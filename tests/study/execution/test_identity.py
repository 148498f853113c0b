"""A cell's identity: a changed input never reuses an old row (checkpoint, data folder, model
factory and weights, image size, version, settings), and an unchanged one always does."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from tests.study.execution.userdata import make_tree, models

from bnkit.study import Results, StudyConfig, UserSpec, run
from bnkit.study.execution import identity
from bnkit.study.execution.cells import Cell

__all__ = ["models"]

CONFIG = {
    "seeds": 2,
    "pretrain": {"max_steps": 10, "eval_every": 5, "warmup_steps": 1, "batch_size": 16},
    "test_time": {"strategies": ["source", "adabn"], "adabn_n": ["all"], "batch_sizes": [8],
                  "streams": ["iid"]},
    "finetune": {"strategies": []},
}  # fmt: skip


def study(out: Path, data: Path, **user: Any) -> Results:
    spec = UserSpec(user.pop("model", "bnkit_user_models:bn_net"), str(data), **user)
    config = StudyConfig().replace_from(CONFIG)
    return run(config, out=out, workers=1, user=spec, progress=False)


def fresh(results: Results) -> bool:
    """Every cell ran now, none came from the earlier run."""
    return results.meta["skipped"] == 0 and results.meta["ran"] == results.meta["cells"] > 0


def weights(path: Path, seed: int) -> str:
    import bnkit_user_models  # type: ignore[import-not-found]

    torch.manual_seed(seed)
    torch.save(bnkit_user_models.bn_net().state_dict(), path)
    return str(path)


def test_a_changed_checkpoint_reruns_every_cell(models: Path, tmp_path: Path) -> None:
    data, out = make_tree(tmp_path / "data"), tmp_path / "out"
    first = study(out, data, checkpoint=weights(tmp_path / "a.pt", 1))
    again = study(out, data, checkpoint=str(tmp_path / "a.pt"))
    assert fresh(first) and again.meta["ran"] == 0 and again.rows == first.rows
    weights(tmp_path / "a.pt", 2)  # the same file name, other weights
    other = study(out, data, checkpoint=str(tmp_path / "a.pt"))
    assert fresh(other)
    assert [r["ece"] for r in other.rows] != [r["ece"] for r in first.rows]  # other numbers


def test_a_changed_data_folder_reruns_every_cell(models: Path, tmp_path: Path) -> None:
    data, out = make_tree(tmp_path / "data"), tmp_path / "out"
    ckpt = weights(tmp_path / "w.pt", 1)
    assert fresh(study(out, data, checkpoint=ckpt))
    image = data / "target" / "dog" / "3.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), mode="L").save(image)  # one image edited
    assert fresh(study(out, data, checkpoint=ckpt))
    (data / "source" / "cat" / "extra.png").write_bytes(image.read_bytes())  # one image added
    assert fresh(study(out, data, checkpoint=ckpt))
    assert study(out, data, checkpoint=ckpt).meta["ran"] == 0


def test_another_model_factory_or_image_size_reruns_every_cell(
    models: Path, tmp_path: Path
) -> None:
    data, out = make_tree(tmp_path / "data"), tmp_path / "out"
    assert fresh(study(out, data))  # trained by the study, no checkpoint
    assert fresh(study(out, data, model="bnkit_user_models:wide_net"))
    assert fresh(study(out, data, image_size=6))
    assert study(out, data, image_size=6).meta["ran"] == 0


def test_another_bnkit_version_reruns_every_cell(
    models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data, out = make_tree(tmp_path / "data"), tmp_path / "out"
    ckpt = weights(tmp_path / "w.pt", 1)
    assert fresh(study(out, data, checkpoint=ckpt))
    monkeypatch.setattr(identity, "__version__", "99.0")
    assert fresh(study(out, data, checkpoint=ckpt))


def test_the_key_covers_every_part_of_the_identity() -> None:
    cell = Cell("test_time", "bn", "adabn", "contrast", 5, seed=0)
    run_id = identity.run_identity("cpu", 16)
    base = identity.cell_identity(cell, run_id, {"width": 16}, {"data": {"d": "1"}, "model": {}})
    key = identity.cell_key(base)
    changes = [
        identity.cell_identity(
            Cell("test_time", "bn", "adabn", "contrast", 5, seed=1), run_id, {"width": 16},
            {"data": {"d": "1"}, "model": {}},
        ),
        identity.cell_identity(cell, identity.run_identity("cuda:1", 16), {"width": 16},
                               {"data": {"d": "1"}, "model": {}}),
        identity.cell_identity(cell, identity.run_identity("cpu", 32), {"width": 16},
                               {"data": {"d": "1"}, "model": {}}),
        identity.cell_identity(cell, run_id, {"width": 8}, {"data": {"d": "1"}, "model": {}}),
        identity.cell_identity(cell, run_id, {"width": 16}, {"data": {"d": "2"}, "model": {}}),
        identity.cell_identity(cell, run_id, {"width": 16},
                               {"data": {"d": "1"}, "model": {"checkpoint": "ab"}}),
    ]  # fmt: skip
    keys = {identity.cell_key(c) for c in changes}
    assert key not in keys and len(keys) == len(changes)
    assert identity.run_identity("cuda:0", 16)["device"] == "cuda"  # the kind, not the index


def test_a_changed_setting_reruns_only_its_protocol(
    tiny_run: tuple[Results, Path], tiny_toml: Path, tmp_path: Path
) -> None:
    first, done = tiny_run
    out = tmp_path / "out"
    shutil.copytree(done, out)
    config = StudyConfig.from_toml(tiny_toml).replace_from({"finetune": {"ghost_size": 2}})
    again = run(config, out=out, workers=1, progress=False)
    finetune = sum(r["protocol"] == "finetune" for r in first.rows)
    assert again.meta["ran"] == finetune and again.meta["skipped"] == len(first.rows) - finetune
