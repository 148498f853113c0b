"""Across two gloo processes: synchronized layers recalibrate exactly, and every collective path
(synchronize, recalibrate, tent) fails on all ranks in bounded time when one rank fails or runs
short, with an error that says so."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from tests.helpers import join_gloo, outcome, two_ranks
from tests.nets import assert_same_state, batches, small_cnn, state

import bnkit
from bnkit.errors import DistributedError, RecalibrationError

pytestmark = pytest.mark.distributed

SHARDS = [batches([16, 7], seed=1), batches([5, 16, 9], seed=2)]  # unequal counts and sizes
WAIT = 3.0  # seconds a rank waits for the other at one exchange


class BoomError(RuntimeError):
    """A loader failing on one rank."""


def _loader(rank: int, fail_on: int | None) -> Any:
    for i, batch in enumerate(SHARDS[rank]):
        if fail_on is not None and i == fail_on:
            raise BoomError(f"rank {rank}: bad batch {i}")
        yield batch


def _worker(rank: int, init: str, out: str) -> None:
    join_gloo(rank, init)
    try:
        results: dict[str, Any] = {}
        # 1. synchronized layers recalibrate like plain ones: exact, and no hang on unequal counts
        model = bnkit.synchronize(small_cnn().eval(), timeout=WAIT)
        results["synced"] = outcome(lambda: bnkit.recalibrate(model, SHARDS[rank], progress=False))
        results["synced_state"] = state(model)
        # 2. a loader that raises on rank 1 fails both ranks, and nothing changes
        model = bnkit.synchronize(small_cnn().eval(), timeout=WAIT)
        fail = 1 if rank == 1 else None
        results["loader"] = outcome(
            lambda: bnkit.recalibrate(model, _loader(rank, fail), progress=False)
        )
        results["loader_state"] = state(model)
        # 3. training with synchronized layers: rank 1 fails before its second step. Each
        # failure gets its own group: after one, a real job stops, and so does that group.
        group = dist.new_group([0, 1])
        model = bnkit.synchronize(small_cnn().train(), group=group, timeout=WAIT)

        def train() -> None:
            for i, x in enumerate(SHARDS[rank][:2]):
                if rank == 1 and i == 1:
                    raise BoomError("rank 1 died")
                model(x).sum().backward()

        results["train"] = outcome(train)
        # 4. TENT on synchronized layers: rank 1 runs out of data first
        group = dist.new_group([0, 1])
        tent_model = bnkit.synchronize(small_cnn().eval(), group=group, timeout=WAIT)
        adapt = bnkit.tent(tent_model, lr=1e-3)

        def stream() -> None:
            for x in SHARDS[rank]:  # 2 batches on rank 0, 3 on rank 1
                adapt(x)

        results["tent"] = outcome(stream)
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return two_ranks(_worker, tmp_path_factory.mktemp("dist_fail"))


def test_synchronized_layers_recalibrate_exactly_with_unequal_batch_counts(
    ranks: list[dict[str, Any]],
) -> None:
    assert ranks[0]["synced"][0] == "ok" and ranks[1]["synced"][0] == "ok"
    assert_same_state(ranks[0]["synced_state"], ranks[1]["synced_state"])
    single = state(bnkit.recalibrate(small_cnn().eval(), SHARDS[0] + SHARDS[1], progress=False))
    for key, value in single.items():  # the variance too: no one-rank count on all-rank sums
        torch.testing.assert_close(ranks[0]["synced_state"][key], value, rtol=2e-6, atol=1e-6)


def test_a_failing_loader_fails_every_rank_and_changes_nothing(
    ranks: list[dict[str, Any]],
) -> None:
    assert ranks[1]["loader"][0].startswith("BoomError: rank 1: bad batch 1")
    assert ranks[0]["loader"][0].startswith(RecalibrationError.__name__)
    assert "failed on rank(s) [1]" in ranks[0]["loader"][0]
    for rank in ranks:
        assert rank["loader"][1] < 30
        assert_same_state(rank["loader_state"], state(small_cnn().eval()))


def test_a_rank_that_dies_in_training_fails_the_other_in_bounded_time(
    ranks: list[dict[str, Any]],
) -> None:
    assert ranks[1]["train"][0] == "BoomError: rank 1 died"
    message, waited = ranks[0]["train"]
    assert message.startswith(DistributedError.__name__), message
    assert "another rank failed, ran out of data or skipped this forward" in message
    assert "layer '1'" in message
    assert WAIT <= waited < WAIT + 20


def test_tent_on_a_rank_that_runs_short_fails_the_other_in_bounded_time(
    ranks: list[dict[str, Any]],
) -> None:
    assert ranks[0]["tent"][0] == "ok"  # its two batches were exchanged with rank 1's first two
    message, waited = ranks[1]["tent"]
    assert message.startswith(DistributedError.__name__), message
    assert waited < WAIT + 20


def test_synchronize_checks_its_timeout() -> None:
    with pytest.raises(bnkit.PolicyError, match="timeout must be a positive number"):
        bnkit.synchronize(nn.Sequential(nn.BatchNorm1d(2)), timeout=0)
