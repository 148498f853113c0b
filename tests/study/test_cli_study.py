"""``bnkit study`` as a user runs it: end to end, killed and resumed, usage errors."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bnkit.cli import main

ENV = {**os.environ, "PYTHONWARNINGS": "error"}


def study(*args: str, out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bnkit", "study", *args, "--out", str(out), "--no-progress"],
        capture_output=True,
        text=True,
        check=False,
        env=ENV,
        timeout=240,
    )


def rows(out: Path) -> list[dict[str, str]]:
    with (out / "results.csv").open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc; empty elsewhere)."""
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cell_key(row: dict[str, str]) -> tuple[str, ...]:
    names = (
        "protocol",
        "model",
        "strategy",
        "shift",
        "severity",
        "stream",
        "batch_size",
        "n",
        "k",
        "lr",
        "seed",
    )
    return tuple(row[n] for n in names)


@pytest.mark.slow
def test_end_to_end_with_two_workers(tiny_toml: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = study("--config", str(tiny_toml), "--workers", "2", out=out)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert "Directional checks (a FAIL is a finding of this study, not an error)" in text
    assert re.search(r"\b(PASS|FAIL)\b", text) and "Schneider et al. 2020" in text
    assert "Test-time accuracy (%)" in text and "adabn (n=360, all)" in text
    assert f"report: {out / 'report.html'}" in text
    table = rows(out)
    assert (
        len(table) == len({cell_key(r) for r in table}) == len(list((out / "cells").glob("*.json")))
    )
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert meta["workers"] == 2 and meta["ran"] == len(table)
    assert (out / "report.md").exists() and list((out / "plots").glob("*.png"))
    assert done.stderr == ""


@pytest.mark.slow
def test_killed_at_any_moment_and_started_again(tiny_toml: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bnkit", "study", "--config", str(tiny_toml), "--out", str(out)]
    proc = subprocess.Popen(
        [*cmd, "--workers", "2", "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
    )
    cells = out / "cells"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if cells.is_dir() and len(list(cells.glob("*.json"))) >= 10:
            break
        time.sleep(0.01)
    workers = children(proc.pid)
    if Path(f"/proc/{proc.pid}/task/{proc.pid}/children").exists():
        assert len(workers) >= 2  # the two pool workers (and multiprocessing's tracker)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the study finished before it could be killed"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.01)
    assert not [pid for pid in workers if alive(pid)], "workers outlived the killed study"
    finished = {p.name: p.read_text() for p in cells.glob("*.json")}
    assert len(finished) >= 10
    assert not (out / "results.csv").exists()

    done = study("--config", str(tiny_toml), "--workers", "1", out=out)
    assert done.returncode == 0, done.stderr
    m = re.search(r"(\d+) cells \((\d+) run now, (\d+) already done\)", done.stdout)
    assert m is not None, done.stdout
    total, ran, skipped = (int(g) for g in m.groups())
    assert skipped == len(finished) and ran + skipped == total
    table = rows(out)
    assert len(table) == total == len({cell_key(r) for r in table})
    for name, text in finished.items():  # the cells from before the kill were kept, not redone
        assert (cells / name).read_text() == text
    meta = json.loads((out / "results.json").read_text())["meta"]
    assert all(model["cache_hit"] for model in meta["source_models"])
    assert not list(cells.glob(".cell-*.tmp"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["study", "--model", "pkg.mod:f"], "needs both --model"),
        (["study", "--checkpoint", "w.pt"], "--checkpoint needs --model and --data"),
        (["study", "--config", "no-such-file.toml"], "cannot read the study config"),
        (["study", "--seeds", "0"], "seeds must be at least 1"),
        (["study", "--device", "tpu"], "device must be auto, cpu or cuda"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_help_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--quick",
        "--config",
        "--out",
        "--workers",
        "--device",
        "--model",
        "--data",
        "--seeds",
    ):
        assert flag in text
