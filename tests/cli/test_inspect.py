"""``bnkit inspect``: end to end as a subprocess, and its usage errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from tests import inspect_factories

from bnkit.cli import main

ROOT = Path(__file__).resolve().parents[2]


def bnkit_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bnkit", "inspect", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


def test_clean_model_exits_0_and_prints_the_report() -> None:
    done = bnkit_cli("tests.inspect_factories:clean")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("BatchNorm layers of Sequential (model in train(), 2 layers)")
    assert "no findings" in done.stdout and done.stderr == ""


def test_checkpoint_json_and_error_exit_code(tmp_path: Path) -> None:
    trained = inspect_factories.fresh()
    trained[1].running_var.fill_(3.0)
    ddp_style = {f"module.{k}": v for k, v in trained.state_dict().items()}
    torch.save({"epoch": 3, "state_dict": ddp_style}, tmp_path / "ckpt.pt")
    # fresh model in eval: layer 5 normalizes with never-updated statistics -> exit 1
    done = bnkit_cli(
        "tests.inspect_factories:fresh",
        "--checkpoint",
        str(tmp_path / "ckpt.pt"),
        "--eval",
        "--input-shape",
        "16,3,8,8",
        "--json",
    )
    assert done.returncode == 1, done.stderr
    doc = json.loads(done.stdout)
    layers = {row["name"]: row for row in doc["report"]["layers"]}
    assert layers["1"]["mean_var"] == 3.0 and layers["1"]["stats_updated"] is True
    errors = [f for f in doc["findings"] if f["severity"] == "error"]
    assert [(f["kind"], f["layers"]) for f in errors] == [("stale_running_stats", ["5"])]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["bad"], "FACTORY must look like package.module:function"),
        (["tests.nowhere:make"], "cannot import 'tests.nowhere': ModuleNotFoundError"),
        (["tests.inspect_factories:missing"], "has no attribute 'missing'"),
        (["tests.inspect_factories:broken"], "raised RuntimeError: factory bug second line"),
        (["tests.inspect_factories:not_a_model"], "returned int, expected a torch.nn.Module"),
        (["tests.inspect_factories:clean", "--checkpoint", "nope.pt"], "'nope.pt' not found"),
        (["tests.inspect_factories:clean", "--input-shape", "8,x"], "positive integers"),
        (["tests.inspect_factories:clean", "--input-shape", "8"], "at least 2 positive dims"),
        (["tests.inspect_factories:clean", "--input-shape", "8,5,8,8"], "forward raised"),
        (["tests.inspect_factories:clean", "--ignore", "nope"], "unknown kind"),
    ],
)
def test_usage_errors_exit_2_with_one_line(
    argv: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["inspect", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("bnkit inspect: ")


def test_bad_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = "tests.inspect_factories:Builders.clean"
    torch.save({"weights": nn.Linear(2, 2)}, tmp_path / "pickled.pt")  # a module, not tensors
    torch.save({"0.weight": torch.zeros(1)}, tmp_path / "other.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    for name, message in [
        ("pickled.pt", "with weights_only=True"),
        ("other.pt", "does not fit the model: missing keys ['1.bias'"),
        ("list.pt", "holds no state_dict"),
    ]:
        assert main(["inspect", spec, "--checkpoint", str(tmp_path / name)]) == 2
        assert message in capsys.readouterr().err


def test_ignore_turns_an_error_into_success(capsys: pytest.CaptureFixture[str]) -> None:
    spec = "tests.inspect_factories:fresh"
    assert main(["inspect", spec, "--eval"]) == 1
    assert "error [stale_running_stats] '1', '5'" in capsys.readouterr().out
    assert main(["inspect", spec, "--eval", "--ignore", "stale_running_stats"]) == 0


def _could_not_run(done: subprocess.CompletedProcess[str], message: str) -> None:
    """Exit 2 (not 1, which CI reads as an error finding), one line on stderr, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert done.stderr.startswith("bnkit inspect: ") and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr and message in done.stderr, done.stderr


def test_inspect_checkpoint_with_integer_keys_exits_2(tmp_path: Path) -> None:
    """Regression: an AttributeError traceback and exit 1."""
    torch.save({0: torch.zeros(1), 1: torch.ones(1)}, tmp_path / "ints.pt")
    done = bnkit_cli("tests.inspect_factories:clean", "--checkpoint", str(tmp_path / "ints.pt"))
    _could_not_run(done, "holds no state_dict (a mapping of names (strings) to tensors")


def test_inspect_meta_device_model_exits_2_or_takes_a_checkpoint(tmp_path: Path) -> None:
    """Regression: a RuntimeError traceback (Tensor.item() on meta tensors) and exit 1."""
    _could_not_run(
        bnkit_cli("tests.inspect_factories:on_meta"), "are on the meta device: shapes without"
    )
    torch.save(inspect_factories.clean().state_dict(), tmp_path / "clean.pt")
    done = bnkit_cli("tests.inspect_factories:on_meta", "--checkpoint", str(tmp_path / "clean.pt"))
    assert done.returncode == 0 and "no findings" in done.stdout, done.stderr


def test_inspect_input_shape_too_large_exits_2() -> None:
    """Regression: an allocation RuntimeError traceback and exit 1."""
    done = bnkit_cli("tests.inspect_factories:clean", "--input-shape", "100000,100000,100000,3")
    _could_not_run(done, "asks for 3e+15 values, more than the 2.68e+08 bnkit inspect allows")


def test_inspect_factory_calling_sys_exit_0_exits_2() -> None:
    """Regression: the factory's sys.exit(0) ended bnkit with exit code 0 and no output."""
    done = bnkit_cli("tests.inspect_factories:exits")
    _could_not_run(done, "called sys.exit(0) instead of returning a model")


def test_inspect_any_other_failure_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever fails inside bnkit while checking is exit 2 with one line, never exit 1."""

    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("an unforeseen failure\nsecond line")

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("bnkit.cli._inspect.report", broken)
    assert main(["inspect", "tests.inspect_factories:clean"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "bnkit inspect: could not run the check: ValueError: an unforeseen failure second line\n"
    )
