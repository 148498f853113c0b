"""recalibrate across two gloo processes: identical statistics, equal to one process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
from tests.nets import assert_same_state, batches, small_cnn, state

import bnkit

pytestmark = pytest.mark.distributed

SHARDS = [batches([16, 7], seed=1), batches([5, 16, 9], seed=2)]
ESTIMATORS = ("population", "batch_mean", "cumulative")


def _worker(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        results: dict[str, Any] = {}
        for estimator in ESTIMATORS:
            model = small_cnn().eval()
            bnkit.recalibrate(model, SHARDS[rank], estimator=estimator, progress=False)
            results[estimator] = state(model)
        wrapped = nn.parallel.DistributedDataParallel(small_cnn().eval())
        bnkit.recalibrate(wrapped, SHARDS[rank], progress=False)
        results["ddp"] = state(wrapped.module)
        # rank 0 has 2 batches: it fails, and rank 1 must fail with it (and not hang)
        model = small_cnn().eval()
        try:
            bnkit.recalibrate(model, SHARDS[rank], num_batches=3, progress=False)
        except bnkit.errors.RecalibrationError as err:
            results["error"] = str(err)
        results["after_error"] = state(model)
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_end_identical_and_equal_to_one_process(tmp_path: Path) -> None:
    init = f"file://{tmp_path / 'store'}"
    mp.spawn(_worker, args=(2, init, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    everything = SHARDS[0] + SHARDS[1]
    for estimator in ESTIMATORS:
        assert_same_state(ranks[0][estimator], ranks[1][estimator])
        single = state(
            bnkit.recalibrate(small_cnn().eval(), everything, estimator=estimator, progress=False)
        )
        for key, value in single.items():
            torch.testing.assert_close(ranks[0][estimator][key], value, rtol=2e-6, atol=1e-6)
        assert int(ranks[0][estimator]["1.num_batches_tracked"]) == len(everything)
    assert_same_state(ranks[0]["ddp"], ranks[0]["population"])
    assert "ran out after 2 batches" in ranks[0]["error"]
    assert "failed on rank(s) [0]" in ranks[1]["error"]
    for rank in ranks:
        assert_same_state(rank["after_error"], state(small_cnn().eval()))
