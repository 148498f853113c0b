"""The user's own data: image folders, factories, checkpoints, the built-in model, clear errors."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from tests.study.execution.userdata import make_tree, models

from bnkit.errors import StudyError
from bnkit.study import Results, StudyConfig, UserSpec, render, run
from bnkit.study.execution.bench import Bench, BenchSpec
from bnkit.study.execution.benches import make_bench

__all__ = ["models"]

CONFIG = {
    "seeds": 2,
    "pretrain": {"max_steps": 20, "eval_every": 10, "warmup_steps": 2, "batch_size": 16},
    "test_time": {"batch_sizes": [1, 8], "adabn_n": [4, "all"], "stress_images": 64},
    "finetune": {"shots": [5, 50], "batch_sizes": [2], "steps": 2, "warmup_steps": 0,
                 "lrs": [1e-3], "curve_points": 2, "strategies": ["pytorch", "frozen_stats"]},
}  # fmt: skip


def bench(data: str, model: str | None = "bnkit_user_models:bn_net", **kw: object) -> Bench:
    config = StudyConfig().replace_from(CONFIG)
    cache = tempfile.mkdtemp(prefix="bnkit-test-")  # the normalization is cached there
    atexit.register(shutil.rmtree, cache, True)
    return make_bench(BenchSpec(config, cache, "cpu", UserSpec(model, data, **kw)))  # type: ignore[arg-type]


def test_a_study_on_image_folders(models: Path, tmp_path: Path) -> None:
    data = make_tree(tmp_path / "data")
    config = StudyConfig().replace_from(CONFIG)
    spec = UserSpec("bnkit_user_models:bn_net", str(data))
    results = run(config, out=tmp_path / "out", workers=1, user=spec, progress=False)
    assert {r["shift"] for r in results.rows if r["protocol"] != "bn_only"} == {"target"}
    assert {r["family"] for r in results.rows} == {"user"}
    assert {r["k"] for r in results.rows if r["protocol"] == "finetune"} == {5}  # 50 > pool
    assert not [r for r in results.rows if r["model"] == "gn" or r["protocol"] == "bn_only"]
    status = {c["name"]: c["status"] for c in results.checks}
    assert status["adabn_photometric"] == status["rotation_control"] == "NOT RUN"
    assert results.meta["sizes"] == {
        "user": {"source_train": 44, "source_val": 4, "target_pool": 20, "target_val": 8,
                 "target_test": 20}
    }  # fmt: skip
    assert (render(results, tmp_path / "out")).exists()


def test_data_alone_runs_with_the_built_in_model_trained_to_convergence(
    tmp_path: Path,
) -> None:
    data = make_tree(tmp_path / "data")
    small = {"width": 4, "test_time": {"strategies": ["source", "adabn"], "streams": ["iid"]}}
    config = StudyConfig().replace_from({**CONFIG, **small, "finetune": {"strategies": []}})
    spec = UserSpec(None, str(data))
    results = run(config, out=tmp_path / "out", workers=1, user=spec, progress=False)
    assert {m["model"] for m in results.meta["source_models"]} == {"bn", "gn"}
    assert all(0 <= m["val_accuracy"] <= 1 for m in results.meta["source_models"])
    assert "ResNetSmall" in results.meta["model"]
    report = (render(results, tmp_path / "out")).with_suffix(".md").read_text(encoding="utf-8")
    assert "held-out source accuracy" in report


def test_a_checkpoint_is_the_source_model_and_a_data_factory_works(
    models: Path, tmp_path: Path
) -> None:
    import bnkit_user_models  # type: ignore[import-not-found]

    torch.manual_seed(3)
    net = bnkit_user_models.bn_net()
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    b = bench("bnkit_user_models:datasets", checkpoint=str(tmp_path / "weights.pt"))
    got = b.source_model("user", "bn", 0)
    for key, value in net.state_dict().items():
        assert torch.equal(got.model.state_dict()[key], value)
    assert b.classes == ["0", "1"] and b.source.x.shape == (48, 1, 8, 8)  # type: ignore[attr-defined]


def test_labels_3_and_7_are_mapped_when_the_study_trains_the_model(
    models: Path, tmp_path: Path
) -> None:
    """Regression: a factory with labels {3, 7} ran with exit code 0 and scored 0%."""
    config = StudyConfig().replace_from({**CONFIG, "finetune": {"strategies": []}})
    spec = UserSpec("bnkit_user_models:bn_net", "bnkit_user_models:three_and_seven")
    results = run(config, out=tmp_path / "out", workers=1, user=spec, progress=False)
    assert results.meta["labels"] == "3→0, 7→1"
    source = results.select(strategy="source")
    assert sum(r["accuracy"] for r in source) / len(source) > 0.5  # scored against outputs 0, 1
    assert "3→0, 7→1" in (render(results, tmp_path / "out")).read_text(encoding="utf-8")


def test_labels_3_and_7_with_a_checkpoint_are_refused(models: Path, tmp_path: Path) -> None:
    import bnkit_user_models

    torch.save(bnkit_user_models.bn_net().state_dict(), tmp_path / "w.pt")
    with pytest.raises(StudyError, match=r"labels \[3, 7\] are not indices of the 2 outputs"):
        bench("bnkit_user_models:three_and_seven", checkpoint=str(tmp_path / "w.pt"))


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
        ("bnkit_user_models:one_output", "has 1 outputs, but the data has 2 classes"),
        ("bnkit_user_models:broken", "failed: RuntimeError: cannot build"),
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


def test_results_are_plain_data() -> None:
    assert Results.__dataclass_fields__.keys() == {"rows", "config", "meta", "checks"}
