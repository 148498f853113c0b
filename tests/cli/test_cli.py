"""The bnkit command line: output and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bnkit.cli import main


def test_explain_demo_as_a_subprocess() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bnkit", "explain", "--demo"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "matches the printed output of the example in 18 of 18 values" in done.stdout
    assert done.stderr == ""


def test_policies_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policies"]) == 0
    out = capsys.readouterr().out
    for name in ("pytorch", "frozen", "frozen_stats", "frozen_affine", "batch_stats", "adapt"):
        assert f"\n{name} " in out
    assert main(["policies", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[1]["name"] == "frozen" and "FrozenBatchNorm2d" in rows[1]["the same as"]


def test_explain_random_example(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--policy", "adapt", "--shape", "5,3", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["normalized_with"] == "running" and data["update"]["factor"] == 0.01
    assert main(["explain", "--eval", "--shape", "2,2,3,3"]) == 0
    assert "no update on this forward" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explain", "--policy", "nope"], "unknown preset 'nope'"),
        (["explain", "--shape", "4,x"], "--shape must be integers"),
        (["explain", "--shape", "1,3", "--policy", "pytorch"], "more than 1 value"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "explain" in capsys.readouterr().out
