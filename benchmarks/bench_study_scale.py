"""The study at scale: Ray's overhead per cell, memory as the user's data grows, ResNet-50 costs.

    python benchmarks/bench_study_scale.py overhead [--workers 2]
    python benchmarks/bench_study_scale.py memory [--sizes 100,1000,10000] [--side 64]
    python benchmarks/bench_study_scale.py flops [--threads 2]
    python benchmarks/bench_study_scale.py workload [--target 2000] [--classes 10] [--tflops 60]

``overhead``: the quick grid (``bnkit study --quick``) on the local pool and on a local Ray
instance with the same number of CPUs, from a shared, already filled source-model cache (so
both only compute cells); the rows must be equal; the difference of wall times per cell is
Ray's overhead (means of three alternated runs each), with the start and stop of a local Ray
instance measured on its own.
``memory``: a user study on generated image folders (RGB, ``side``×``side``), one fresh
process per size; peak RSS of that process (it reads the images itself: ``loader_workers``
0), against the bytes the decoded images would take in memory. ``flops``: forward FLOPs of a
torchvision-style ResNet-50 at 224 (torch's FLOP counter) and its images/s on this CPU, the
inputs of the cost on paper in ``benchmarks/README.md``; ``workload``: images through the
network per cell of the default grid on a user's data set (counted from the grid itself).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch


def _numbers(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in ("wall_s", "images_per_s")} for r in rows]


def overhead(workers: int) -> None:
    from bnkit.study import StudyConfig, run
    from bnkit.study.execution.ray_executor import import_ray, ray_session

    torch.set_num_threads(1)
    config = StudyConfig.quick()
    with tempfile.TemporaryDirectory(prefix="bnkit-bench-") as tmp:
        root, cache = Path(tmp), Path(tmp) / "cache"
        t = time.perf_counter()
        warm = run(config, out=root / "warm", workers=workers, cache=cache, progress=False)
        print(f"warm-up (pool, trains the source models): {time.perf_counter() - t:.1f} s")
        walls: dict[str, list[float]] = {"local": [], "ray": []}
        rows = {}
        for rep in range(3):
            for executor in ("local", "ray") if rep % 2 == 0 else ("ray", "local"):
                out = root / f"{executor}{rep}"
                got = run(config, out=out, workers=workers, cache=cache, executor=executor,
                          progress=False)  # fmt: skip
                walls[executor].append(got.meta["wall_s"])
                rows[executor] = _numbers(got.rows)
        ray = import_ray()
        t = time.perf_counter()
        with ray_session(ray, None, root / "empty" / "ray", workers, 0):
            ray.get(ray.remote(lambda: 1).remote())
        start_stop = time.perf_counter() - t
    cells = len(warm.rows)
    assert rows["local"] == rows["ray"] == _numbers(warm.rows), "Ray's rows differ"
    pool, on_ray = min(walls["local"]), min(walls["ray"])
    print(f"quick grid: {cells} cells, {workers} CPUs, rows equal on both executors")
    print(f"local pool: {walls['local']} s (best {pool:.1f}, {1000 * pool / cells:.1f} ms/cell)")
    print(f"ray:        {walls['ray']} s (best {on_ray:.1f}, {1000 * on_ray / cells:.1f} ms/cell)")
    print(f"a local Ray instance: start, one task, stop: {start_stop:.1f} s")
    mean = {k: sum(v) / len(v) for k, v in walls.items()}
    per = (mean["ray"] - mean["local"]) / cells
    rest = (mean["ray"] - start_stop - mean["local"]) / cells
    print(f"means: local {mean['local']:.1f} s, ray {mean['ray']:.1f} s")
    print(f"Ray overhead per cell: {1000 * per:.1f} ms ({1000 * rest:.1f} ms without start/stop)")


CHILD = """
import json, resource, sys, torch
torch.set_num_threads(1)
from bnkit.study import StudyConfig, UserSpec, run
config = StudyConfig().replace_from(json.loads(sys.argv[3]))
got = run(config, out=sys.argv[2], workers=1, user=UserSpec(None, sys.argv[1]), progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_kib": peak, "cells": len(got.rows), "wall_s": got.meta["wall_s"]}))
"""

MEMORY_CONFIG = {
    "seeds": 1,
    "width": 8,
    "groupnorm": False,
    "pretrain": {"max_steps": 20, "eval_every": 10, "warmup_steps": 2, "eval_batch_size": 64},
    "test_time": {"strategies": ["source", "adabn", "test_batch"], "adabn_n": ["all"],
                  "batch_sizes": [64], "streams": ["iid"], "eval_batch_size": 64},
    "finetune": {"strategies": []},
    "data": {"loader_workers": 0},
}  # fmt: skip


def make_folder(root: Path, n: int, side: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    per = n // 4  # source and target, two classes each
    for domain in ("source", "target"):
        for label in ("a", "b"):
            folder = root / domain / label
            folder.mkdir(parents=True)
            for i in range(per):
                base = 80 + 80 * (label == "b") + 30 * (domain == "target")
                pixels = np.clip(rng.normal(base, 40, (side, side, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode="RGB").save(folder / f"{i}.png")


def memory(sizes: list[int], side: int) -> None:
    print(f"user study, {side}x{side} RGB images, loader_workers 0, 1 worker:")
    print("| images | decoded in memory would be | peak RSS | cells | wall |")
    print("|---:|---:|---:|---:|---:|")
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="bnkit-bench-") as tmp:
            make_folder(Path(tmp) / "data", n, side)
            args = [str(Path(tmp) / "data"), str(Path(tmp) / "out"), json.dumps(MEMORY_CONFIG)]
            done = subprocess.run(
                [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, check=True
            )
            got = json.loads(done.stdout.strip().splitlines()[-1])
        decoded = n * 3 * side * side * 4 / 2**20
        print(f"| {n} | {decoded:.0f} MiB | {got['peak_kib'] / 1024:.0f} MiB | {got['cells']} "
              f"| {got['wall_s']:.0f} s |")  # fmt: skip


def flops(threads: int) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.torchvision_shim import install

    install()
    import torchvision

    torch.set_num_threads(threads)
    model = torchvision.models.resnet50(num_classes=1000).eval()
    x = torch.randn(1, 3, 224, 224)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    per_image = counter.get_total_flops()
    print(f"ResNet-50 at 224: {per_image / 1e9:.2f} GFLOPs per image, forward")
    for batch in (1, 16):
        xb = torch.randn(batch, 3, 224, 224)
        with torch.no_grad():
            model(xb)
            t = time.perf_counter()
            for _ in range(3):
                model(xb)
            fwd = (time.perf_counter() - t) / 3
        model.train()
        t = time.perf_counter()
        for _ in range(2):
            model(xb).sum().backward()
        step = (time.perf_counter() - t) / 2
        model.eval()
        print(f"CPU, {threads} threads, batch {batch}: forward {batch / fwd:.1f} images/s "
              f"({per_image * batch / fwd / 1e9:.0f} GFLOP/s); forward+backward "
              f"{batch / step:.1f} images/s")  # fmt: skip
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    from PIL import Image

    from bnkit.study.data.files import FileImages

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="bnkit-bench-") as tmp:
        paths = []
        for i in range(200):
            pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
            Image.fromarray(pixels, mode="RGB").save(Path(tmp) / f"{i}.jpg", quality=90)
            paths.append(Path(tmp) / f"{i}.jpg")
        files = FileImages(paths, "RGB", (224, 224), [0.5] * 3, [0.25] * 3)
        t = time.perf_counter()
        for i in range(len(files)):
            files[i]
        rate = len(files) / (time.perf_counter() - t)
    print(f"one process decodes, resizes and normalizes {rate:.0f} 256x256 JPEGs/s to 224x224")


def workload(
    target: int, classes: int, tflops: float, batch_ms: float, step_ms: float, decode: float
) -> None:
    """Work per cell of the default grid on a user's data (``target`` target images of
    ``classes`` classes) and its GPU time for a ResNet-50 at 224 under a stated cost model.

    A cell takes max(its FLOPs at ``tflops`` sustained, its forward batches × ``batch_ms`` +
    its training steps × ``step_ms``, the images it reads at ``decode`` images/s): small
    batches are bound by kernel launches, not FLOPs, and every cell reads its images again.
    """
    import math
    from collections import Counter

    from bnkit.study import StudyConfig, UserSpec
    from bnkit.study.execution.bench import BenchSpec
    from bnkit.study.execution.benches import make_bench
    from bnkit.study.execution.grid import grid

    config = StudyConfig.default()
    tt, ft = config.test_time, config.finetune
    test, pool, val = 0.4 * target, 0.4 * target, 0.2 * target
    with tempfile.TemporaryDirectory(prefix="bnkit-bench-") as tmp:
        make_folder(Path(tmp) / "data", 4 * 40, 8)  # only the grid's shape is used
        spec = BenchSpec(config, tmp, "cpu", UserSpec(None, str(Path(tmp) / "data")), "w")
        cells = grid(make_bench(spec))

    def batches(n: float, size: int) -> int:
        return math.ceil(n / size)

    def cost(c: Any) -> tuple[float, int, int]:
        """(image passes, a backward counted as two; forward batches; training steps)"""
        if c.protocol == "finetune":
            evals = ft.curve_points * val + test + (pool if c.strategy == "adabn_finetune" else 0)
            fwd = ft.curve_points * batches(val, ft.eval_batch_size) + batches(test, 512)
            return 3 * ft.steps * min(c.batch_size, c.k * classes) + evals, fwd, ft.steps
        if c.strategy in ("tent_long", "tent_reset"):
            return 3 * tt.stress_images, 0, batches(tt.stress_images, c.batch_size)
        if c.strategy == "tent":
            return 3 * test, 0, batches(test, c.batch_size)
        if c.strategy in ("source", "adabn"):
            stats = min(c.n or pool, pool) if c.strategy == "adabn" else 0
            fwd = batches(test, tt.eval_batch_size) + batches(stats, tt.stats_batch_size)
            return test + stats, fwd, 0
        return test, batches(test, c.batch_size), 0

    def reads(c: Any) -> float:
        """Images decoded from files (the few-shot set is read once and kept)."""
        if c.protocol == "finetune":
            extra = pool if c.strategy == "adabn_finetune" else 0
            return c.k * classes + ft.curve_points * val + test + extra
        if c.strategy in ("tent_long", "tent_reset"):
            return tt.stress_images
        return test + (min(c.n or pool, pool) if c.strategy == "adabn" else 0)

    per = [cost(c) for c in cells]
    read = [reads(c) for c in cells]
    flops = 8.18e9  # ResNet-50 at 224, forward, measured by `flops`
    seconds = [
        max(p * flops / (tflops * 1e12), (f * batch_ms + s * step_ms) / 1e3, r / decode)
        for (p, f, s), r in zip(per, read, strict=True)
    ]
    kinds = Counter(c.protocol for c in cells)
    mean_s = sum(seconds) / len(seconds)
    passes = sum(p for p, _, _ in per) / len(per)
    print(
        f"default grid on a user's data: {len(cells)} cells per {config.seeds} seeds {dict(kinds)}"
    )
    print(f"target {target} images, {classes} classes: {passes:.0f} image passes per cell "
          f"({passes * flops / 1e12:.1f} TFLOP); modelled GPU time {mean_s:.2f} s per cell "
          f"({tflops:g} TFLOP/s, {batch_ms:g} ms a batch, {step_ms:g} ms a step)")  # fmt: skip
    print(f"images read per cell: {sum(read) / len(read):.0f} on average, at {decode:g}/s")
    bound = sum(
        1 for (p, f, s), t in zip(per, seconds, strict=True) if t > p * flops / (tflops * 1e12)
    )
    print(f"cells bound by launches or reading, not FLOPs: {bound} of {len(cells)}")
    for gpus in (1, 8, 64):
        hours = 1e5 * mean_s / gpus / 3600
        print(f"10^5 such cells on {gpus} GPU(s): {hours:.1f} h")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("overhead").add_argument("--workers", type=int, default=2)
    m = sub.add_parser("memory")
    m.add_argument("--sizes", default="100,1000,10000")
    m.add_argument("--side", type=int, default=64)
    sub.add_parser("flops").add_argument("--threads", type=int, default=2)
    w = sub.add_parser("workload")
    w.add_argument("--target", type=int, default=2000)
    w.add_argument("--classes", type=int, default=10)
    w.add_argument("--tflops", type=float, default=60.0)
    w.add_argument("--batch-ms", type=float, default=4.0)
    w.add_argument("--step-ms", type=float, default=12.0)
    w.add_argument("--decode", type=float, default=1200.0, help="images read per s per GPU")
    args = parser.parse_args()
    if args.what == "overhead":
        overhead(args.workers)
    elif args.what == "memory":
        memory([int(s) for s in args.sizes.split(",")], args.side)
    elif args.what == "workload":
        workload(args.target, args.classes, args.tflops, args.batch_ms, args.step_ms, args.decode)
    else:
        flops(args.threads)


if __name__ == "__main__":
    main()
