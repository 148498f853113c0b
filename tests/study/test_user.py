"""The user's own model and data: image folders, factories, checkpoints, clear errors."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bnkit.errors import StudyError
from bnkit.study import Results, StudyConfig, UserSpec, render, run
from bnkit.study.bench import BenchSpec, make_bench

MODELS = """
import torch
import torch.nn as nn


def bn_net():
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2),
    )


def no_bn():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 2))


def not_a_module():
    return "a string"


def three_classes():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(3))


def datasets():
    g = torch.Generator().manual_seed(0)
    def make(offset):
        images = [torch.rand(1, 8, 8, generator=g) * 0.5 for _ in range(48)]
        return [(x + offset * (i % 2), i % 2) for i, x in enumerate(images)]
    return make(0.3), make(0.1)
"""

CONFIG = {
    "seeds": 1,
    "pretrain": {"epochs": 2, "batch_size": 16},
    "test_time": {"batch_sizes": [1, 8], "adabn_n": [4, "all"], "stress_passes": 1},
    "finetune": {"shots": [5, 50], "batch_sizes": [2], "steps": 2, "lrs": [1e-3]},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("models")
    (folder / "bnkit_user_models.py").write_text(MODELS, encoding="utf-8")
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("bnkit_user_models", None)


def make_tree(root: Path, classes: dict[str, tuple[str, ...]] | None = None, n: int = 24) -> Path:
    rng = np.random.default_rng(0)
    classes = classes or {"source": ("cat", "dog"), "target": ("cat", "dog")}
    for domain, names in classes.items():
        for label, name in enumerate(names):
            folder = root / domain / name
            folder.mkdir(parents=True)
            for i in range(n):
                base = 60 + 120 * label + (40 if domain == "target" else 0)
                pixels = np.clip(rng.normal(base, 20, (8, 8)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    return root


def bench(data: str, model: str = "bnkit_user_models:bn_net", **kw: object) -> object:
    config = StudyConfig().replace_from(CONFIG)
    return make_bench(BenchSpec(config, "unused", "cpu", UserSpec(model, data, **kw)))  # type: ignore[arg-type]


def test_a_study_on_image_folders(models: Path, tmp_path: Path) -> None:
    data = make_tree(tmp_path / "data")
    config = StudyConfig().replace_from(CONFIG)
    spec = UserSpec("bnkit_user_models:bn_net", str(data))
    results = run(config, out=tmp_path / "out", workers=1, user=spec, progress=False)
    assert {r["shift"] for r in results.rows} == {"target"}
    assert {r["family"] for r in results.rows} == {"user"}
    assert {r["k"] for r in results.rows if r["protocol"] == "finetune"} == {5}  # 50 > pool
    assert not [r for r in results.rows if r["model"] == "gn" or r["protocol"] == "bn_only"]
    status = {c["name"]: c["status"] for c in results.checks}
    assert status["adabn_photometric"] == status["rotation_control"] == "NOT RUN"
    assert status["sorted_stream"] in ("PASS", "FAIL")
    assert results.meta["sizes"] == {
        "source_train": 44,
        "source_val": 4,
        "target_pool": 24,
        "target_test": 24,
    }
    assert (render(results, tmp_path / "out")).exists()


def test_a_checkpoint_is_the_source_model_and_a_data_factory_works(
    models: Path, tmp_path: Path
) -> None:
    import bnkit_user_models  # type: ignore[import-not-found]

    torch.manual_seed(3)
    net = bnkit_user_models.bn_net()
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    b = bench("bnkit_user_models:datasets", checkpoint=str(tmp_path / "weights.pt"))
    got = b.source_model("bn", 0)  # type: ignore[attr-defined]
    for key, value in net.state_dict().items():
        assert torch.equal(got.model.state_dict()[key], value)
    assert b.classes == ["0", "1"] and b.source.x.shape == (48, 1, 8, 8)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"source": ("cat", "dog")}, "expected the folder .*target"),
        (
            {"source": ("cat", "dog"), "target": ("cat", "cow")},
            r"only in source: \['dog'\], only in target: \['cow'\]",
        ),
    ],
)
def test_folder_errors(
    models: Path, tmp_path: Path, layout: dict[str, tuple[str, ...]], message: str
) -> None:
    data = make_tree(tmp_path / "data", layout)
    with pytest.raises(StudyError, match=message):
        bench(str(data))


def test_empty_class_missing_data_and_unreadable_images(models: Path, tmp_path: Path) -> None:
    with pytest.raises(StudyError, match="does not exist"):
        bench(str(tmp_path / "nowhere"))
    data = make_tree(tmp_path / "data")
    (data / "target" / "bird").mkdir()
    (data / "source" / "bird").mkdir()
    with pytest.raises(StudyError, match="bird' has no images"):
        bench(str(data))
    data2 = make_tree(tmp_path / "data2")
    (data2 / "source" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(StudyError, match=r"cannot read image .*broken\.png"):
        bench(str(data2))


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("bnkit_user_models:no_bn", "has no BatchNorm layer"),
        ("bnkit_user_models:not_a_module", "returned str; it must return a torch.nn.Module"),
        ("bnkit_user_models:three_classes", r"logits of shape \(N, 2\)"),
        ("bnkit_user_models:nothing", "has no 'nothing'"),
        ("no_such_module_xyz:f", "cannot import 'no_such_module_xyz'"),
        ("bnkit_user_models", "must be written package.module:function"),
    ],
)
def test_model_errors(models: Path, tmp_path: Path, model: str, message: str) -> None:
    data = make_tree(tmp_path / "data")
    with pytest.raises(StudyError, match=message):
        bench(str(data), model=model)


def test_a_checkpoint_that_does_not_fit(models: Path, tmp_path: Path) -> None:
    torch.save({"state_dict": {"weight": torch.zeros(3)}}, tmp_path / "bad.pt")
    data = make_tree(tmp_path / "data")
    with pytest.raises(StudyError, match="does not fit --model"):
        bench(str(data), checkpoint=str(tmp_path / "bad.pt"))
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(StudyError, match="cannot load checkpoint"):
        bench(str(data), checkpoint=str(tmp_path / "junk.pt"))


def test_results_are_plain_data(models: Path, tmp_path: Path) -> None:
    assert Results.__dataclass_fields__.keys() == {"rows", "config", "meta", "checks"}
