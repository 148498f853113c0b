"""``bnkit study`` as a user runs it: end to end, killed and resumed, usage errors."""

from __future__ import annotations

import contextlib
import csv
import errno
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
    assert re.search(r"\b(PASS|FAIL|UNDECIDED)\b", text) and "Schneider et al. 2020" in text
    assert "Test time: source accuracy (%)" in text and "adabn (whole pool)" in text
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
    assert not list(cells.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["study", "--model", "pkg.mod:f"], "--model needs --data"),
        (["study", "--checkpoint", "w.pt"], "--checkpoint needs --data"),
        (["study", "--data", "d", "--checkpoint", "w.pt"], "--checkpoint needs --model"),
        (["study", "--config", "no-such-file.toml"], "cannot read the study config"),
        (["study", "--seeds", "0"], "seeds must be at least 1"),
        (["study", "--device", "tpu"], "device must be auto, cpu or cuda"),
        (["study", "--workers", "0"], "workers must be at least 1"),
        (["study", "--shard", "2/2"], "--shard must be I/N with 0 <= I < N"),
        (["study", "--address", "auto"], "use it with --executor ray"),
        (["study", "--executor", "ray", "--device", "cuda:1"], "use --device cuda"),
        (["study", "collect", "no-such-folder"], "holds no part.json"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``bnkit ARGV`` in this process; it must exit 2 with one line on stderr."""
    started = time.perf_counter()
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("bnkit study: ") and "Traceback" not in err
    assert time.perf_counter() - started < 30
    return err


def test_a_config_that_is_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "grid.toml"
    bad.write_bytes("# réglages\nseeds = 2\n".encode("latin-1"))
    err = one_line_error(["study", "--config", str(bad), "--out", str(tmp_path / "o")], capsys)
    assert "is not UTF-8 text" in err


def test_a_bad_value_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: tent_lr = -1 failed only after pretraining."""
    bad = tmp_path / "grid.toml"
    bad.write_text("[test_time]\ntent_lr = -1\n", encoding="utf-8")
    out = tmp_path / "o"
    err = one_line_error(["study", "--config", str(bad), "--out", str(out)], capsys)
    assert "test_time tent_lr must be a positive number (got -1.0)" in err
    assert not out.exists()  # nothing was started


def test_an_out_that_is_a_file_or_cannot_be_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    afile = tmp_path / "results.txt"
    afile.write_text("x", encoding="utf-8")
    err = one_line_error(["study", "--quick", "--out", str(afile)], capsys)
    assert "is a file, not a folder" in err
    err = one_line_error(["study", "--quick", "--out", str(afile / "sub")], capsys)
    assert "cannot write into --out" in err


def test_a_full_disk_is_one_line_not_a_traceback(
    tiny_run: tuple[object, Path],
    tiny_toml: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bnkit.study.execution import store

    def full(path: Path, text: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(store, "atomic_write", full)
    cache = tiny_run[1] / "cache"  # models trained already: the first write is a cell's
    argv = ["study", "--config", str(tiny_toml), "--out", str(tmp_path / "o"), "--cache",
            str(cache), "--workers", "1"]  # fmt: skip
    err = one_line_error(argv, capsys)
    assert "cannot write the study's files" in err and "No space left on device" in err


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
        "--executor",
        "--address",
        "--shard",
        "collect",
    ):
        assert flag in text
