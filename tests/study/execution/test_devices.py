"""One worker per GPU, each on its own device (the assignment is tested without CUDA, by
naming the devices a pool's workers get)."""

from __future__ import annotations

import os
import time

import pytest

from bnkit.errors import StudyError
from bnkit.study.execution import devices
from bnkit.study.execution.bench import BenchSpec
from bnkit.study.execution.local import LocalExecutor


def test_cuda_with_n_gpus_is_n_workers_on_cuda_0_to_n_minus_1() -> None:
    assert devices.default_workers("cuda", gpus=4, cores=16) == 4
    assert devices.assign("cuda", gpus=4, workers=4) == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert devices.assign("cuda", gpus=2, workers=5) == [
        "cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"
    ]  # fmt: skip
    assert devices.default_workers("cuda:1", gpus=4, cores=16) == 1
    assert devices.assign("cuda:1", gpus=4, workers=2) == ["cuda:1", "cuda:1"]
    assert devices.default_workers("cpu", gpus=0, cores=16) == 8
    assert devices.default_workers("cpu", gpus=0, cores=2) == 2
    assert devices.assign("cpu", gpus=0, workers=3) == ["cpu"] * 3


def test_impossible_devices_are_refused() -> None:
    with pytest.raises(StudyError, match="torch sees no CUDA device"):
        devices.assign("cuda", gpus=0, workers=1)
    with pytest.raises(StudyError, match=r"cuda:0 to cuda:1"):
        devices.assign("cuda:2", gpus=2, workers=1)
    with pytest.raises(StudyError, match="workers must be at least 1"):
        devices.assign("cpu", gpus=0, workers=0)


def test_a_task_computes_on_its_workers_device(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = BenchSpec(None, "cache", "cuda")  # type: ignore[arg-type]
    assert devices.here(spec) is spec  # a process with no device of its own
    monkeypatch.setattr(devices, "_DEVICE", "cuda:3")
    assert devices.here(spec).device == "cuda:3" and devices.here(spec).cache_dir == "cache"


def _where(_: int) -> tuple[int, str | None]:
    time.sleep(0.05)  # long enough for every worker to take tasks
    return os.getpid(), devices.worker_device()


def test_each_pool_worker_gets_its_own_device() -> None:
    names = ["gpu-a", "gpu-b"]  # any names: only cuda:K makes a worker call torch.cuda
    with LocalExecutor(names, threads=1) as pool:
        got = set(pool.imap(_where, range(12)))
    by_pid = dict(got)
    assert len(by_pid) == len(got)  # a worker keeps its device
    assert sorted(by_pid.values()) == names  # two workers, one device each


def test_one_worker_runs_in_this_process_on_its_device() -> None:
    with LocalExecutor(["gpu-a"], threads=1) as pool:
        assert list(pool.imap(_where, [0])) == [(os.getpid(), "gpu-a")]
    assert devices.worker_device() is None  # restored


def _cuda_where(_: int) -> tuple[int, str]:
    import torch

    time.sleep(0.05)
    return os.getpid(), f"cuda:{torch.cuda.current_device()}"


@pytest.mark.gpu
def test_each_gpu_gets_one_worker_on_a_real_machine() -> None:
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 or more GPUs")
    n = torch.cuda.device_count()
    names = devices.assign("cuda", n, devices.default_workers("cuda", n, 1))
    with LocalExecutor(names, threads=1) as pool:
        got = dict(pool.imap(_cuda_where, range(8 * n)))
    assert sorted(got.values()) == sorted(names)
