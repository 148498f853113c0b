"""Wall time and CPU time of ``bnkit study``, and the throughput of its fine-tuning cells.

Runs the command line as a user would (each run a fresh process), in this order:

1. ``--quick`` with an empty output folder and model cache (pretraining included);
2. ``--quick`` into a new output folder, reusing the model cache (pretraining cached);
3. the default study with the default workers (pretraining included);
4. the default study into a new folder, reusing the cache, with ``--workers 1``;
5. the default study again into the folder of 3 (every cell done: a resume with nothing left).

CPU time is user + system time of the process and its workers (``RUSAGE_CHILDREN``), which
does not grow when other programs share the machine; wall time does (the load average before
and after each run is printed). Images per second of the fine-tuning cells come from the rows of
run 3 (training images / training seconds, median per fine-tuning batch size), and so does the
breakdown of the cells' own seconds by protocol (pretraining: the source models' training
seconds).

Usage: ``python benchmarks/bench_study.py [--only quick] [--root DIR]``; prints a Markdown
table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(args: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of ``bnkit study ARGS`` in a child process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "bnkit", "study", "--no-progress", *args],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def throughput(out: Path) -> dict[int, float]:
    rows = json.loads((out / "results.json").read_text())["rows"]
    by_batch: dict[int, list[float]] = {}
    for row in rows:
        if row["protocol"] == "finetune" and row["model"] == "bn":
            by_batch.setdefault(int(row["batch_size"]), []).append(float(row["images_per_s"]))
    return {b: statistics.median(v) for b, v in sorted(by_batch.items())}


def breakdown(out: Path) -> dict[str, float]:
    data = json.loads((out / "results.json").read_text())
    seconds: dict[str, float] = {"pretraining": 0.0}
    for m in data["meta"]["source_models"]:
        seconds["pretraining"] += float(m["train_s"])
    for row in data["rows"]:
        seconds[row["protocol"]] = seconds.get(row["protocol"], 0.0) + float(row["wall_s"])
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["quick"], help="run only the --quick measurements")
    parser.add_argument("--root", help="folder for outputs (default: a temporary folder)")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="bnkit-bench-study-"))
    cache = root / "cache"
    runs: list[tuple[str, list[str]]] = [
        (
            "--quick (pretraining included)",
            ["--quick", "--out", str(root / "q1"), "--cache", str(root / "qc")],
        ),
        (
            "--quick (pretraining cached)",
            ["--quick", "--out", str(root / "q2"), "--cache", str(root / "qc")],
        ),
    ]
    if args.only != "quick":
        runs += [
            ("default (pretraining included)", ["--out", str(root / "d1"), "--cache", str(cache)]),
            (
                "default, --workers 1 (pretraining cached)",
                ["--out", str(root / "d2"), "--cache", str(cache), "--workers", "1"],
            ),
            (
                "default, rerun with every cell done",
                ["--out", str(root / "d1"), "--cache", str(cache)],
            ),
        ]
    print("| run | wall (s) | CPU (s) | workers | cells | load before → after |")
    print("|---|---|---|---|---|---|")
    for label, argv in runs:
        before = os.getloadavg()[0]
        wall, cpu = timed(argv)
        out = Path(argv[argv.index("--out") + 1])
        meta = json.loads((out / "results.json").read_text())["meta"]
        print(
            f"| {label} | {wall:.0f} | {cpu:.0f} | {meta['workers']} | {meta['cells']} | "
            f"{before:.1f} → {os.getloadavg()[0]:.1f} |",
            flush=True,
        )
    source = root / ("d1" if args.only != "quick" else "q1")
    print()
    print("| fine-tuning batch size | images/s (median over cells) |")
    print("|---|---|")
    for batch, ips in throughput(source).items():
        print(f"| {batch} | {ips:.0f} |")
    print()
    print("| part | seconds (sum over processes) |")
    print("|---|---|")
    for part, seconds in breakdown(source).items():
        print(f"| {part} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
