"""bnkit.distribute_stats across two gloo processes: the mean over ranks (float64 oracle from
each rank's statistics) or rank src's; a rank that cannot take part fails both ranks at once
with nothing changed, and a rank that never calls fails the other in bounded time."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from tests.helpers import join_gloo, outcome, two_ranks
from tests.nets import small_cnn, state

import bnkit
from bnkit.errors import DistributedError, PolicyError

pytestmark = pytest.mark.distributed

WAIT = 1.0  # seconds a rank waits for the other at one exchange


def _trained(rank: int) -> nn.Module:
    """The same model, trained on each rank's own data: different running statistics."""
    model = small_cnn().train()
    g = torch.Generator().manual_seed(10 + rank)
    with torch.no_grad():
        for _ in range(2 + rank):  # unequal step counts: the counters differ too
            model(torch.randn(6, 3, 8, 8, generator=g) * (1 + rank) + rank)
    return model


def _worker(rank: int, init: str, out: str) -> None:
    join_gloo(rank, init)
    try:
        results: dict[str, Any] = {"before": state(_trained(rank))}
        model = _trained(rank)
        results["mean"] = outcome(lambda: bnkit.distribute_stats(model, timeout=WAIT))
        results["mean_state"] = state(model)
        model = _trained(rank)
        results["broadcast"] = outcome(
            lambda: bnkit.distribute_stats(model, "broadcast", src=1, timeout=WAIT)
        )
        results["broadcast_state"] = state(model)
        model = _trained(rank)
        bnkit.distribute_stats(model, where="9", timeout=WAIT)
        results["where_state"] = state(model)
        # NaN on rank 1: in "mean" both ranks refuse; a broadcast from rank 0 still works
        model = _trained(rank)
        if rank == 1:
            model[4].running_var[0] = float("nan")
        results["nan_state_before"] = state(model)
        results["nan"] = outcome(lambda: bnkit.distribute_stats(model, timeout=WAIT))
        results["nan_state"] = state(model)
        results["nan_broadcast"] = outcome(
            lambda: bnkit.distribute_stats(model, "broadcast", timeout=WAIT)
        )
        # other layers on one rank: both refuse
        other = _trained(rank) if rank == 0 else nn.Sequential(nn.BatchNorm1d(3))
        results["mismatch"] = outcome(lambda: bnkit.distribute_stats(other, timeout=WAIT))
        # rank 1 fails before it calls (and stays up): rank 0 gives up after WAIT seconds
        group = dist.new_group([0, 1])
        model = _trained(rank)

        def epoch_end() -> None:
            if rank == 1:
                raise RuntimeError("rank 1 died")
            bnkit.distribute_stats(model, group=group, timeout=WAIT)

        results["dead"] = outcome(epoch_end)
        if rank == 1:
            time.sleep(WAIT + 1)  # alive, but never calling: rank 0 must give up on its own
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return two_ranks(_worker, tmp_path_factory.mktemp("distribute"))


def _stats_keys(s: dict[str, torch.Tensor]) -> list[str]:
    return [k for k in s if k.endswith(("running_mean", "running_var"))]


def test_mean_is_the_mean_over_ranks_and_the_largest_counter(ranks: list[dict[str, Any]]) -> None:
    a, b = ranks[0]["before"], ranks[1]["before"]
    assert ranks[0]["mean"][0] == ranks[1]["mean"][0] == "ok"
    for key in _stats_keys(a):
        assert not torch.equal(a[key], b[key])  # the ranks really differed
        expected = ((a[key].double() + b[key].double()) / 2).float()
        for rank in ranks:
            assert torch.equal(rank["mean_state"][key], expected), key
    for key in [k for k in a if k.endswith("num_batches_tracked")]:
        assert int(a[key]) != int(b[key])
        for rank in ranks:
            assert int(rank["mean_state"][key]) == max(int(a[key]), int(b[key]))
    for key in [k for k in a if k.endswith(("weight", "bias"))]:
        assert torch.equal(ranks[0]["mean_state"][key], a[key])  # parameters untouched


def test_broadcast_gives_every_rank_the_statistics_of_src(ranks: list[dict[str, Any]]) -> None:
    src = ranks[1]["before"]
    for rank in ranks:
        assert rank["broadcast"][0] == "ok"
        for key, value in src.items():
            if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
                assert torch.equal(rank["broadcast_state"][key], value), key


def test_where_selects_the_layers(ranks: list[dict[str, Any]]) -> None:
    a, b = ranks[0]["before"], ranks[1]["before"]
    mean = ((a["9.running_mean"].double() + b["9.running_mean"].double()) / 2).float()
    for rank, mine in zip(ranks, (a, b), strict=True):
        assert torch.equal(rank["where_state"]["9.running_mean"], mean)
        assert torch.equal(rank["where_state"]["1.running_mean"], mine["1.running_mean"])


def test_a_rank_with_nonfinite_statistics_fails_both_and_changes_nothing(
    ranks: list[dict[str, Any]],
) -> None:
    for rank in ranks:
        message, waited = rank["nan"]
        assert message.startswith(DistributedError.__name__), message
        assert "rank(s) [1] of the group cannot take part" in message
        assert waited < 10
        for key, value in rank["nan_state_before"].items():
            torch.testing.assert_close(
                rank["nan_state"][key], value, rtol=0, atol=0, equal_nan=True
            )
    assert "here: NaN/Inf running statistics in layer '4'" in ranks[1]["nan"][0]
    assert ranks[0]["nan_broadcast"][0] == ranks[1]["nan_broadcast"][0] == "ok"


def test_different_layers_fail_both(ranks: list[dict[str, Any]]) -> None:
    for rank in ranks:
        assert "the ranks hold different BatchNorm layers" in rank["mismatch"][0]


def test_a_rank_that_never_calls_fails_the_other_in_bounded_time(
    ranks: list[dict[str, Any]],
) -> None:
    assert ranks[1]["dead"][0] == "RuntimeError: rank 1 died"
    message, waited = ranks[0]["dead"]
    assert message.startswith(DistributedError.__name__), message
    assert "another rank failed or did not call distribute_stats" in message
    assert WAIT <= waited < WAIT + 20


def test_one_process_changes_nothing_and_arguments_are_checked() -> None:
    model = small_cnn()
    before = state(model)
    assert bnkit.distribute_stats(model) is model
    assert all(torch.equal(v, before[k]) for k, v in state(model).items())
    with pytest.raises(PolicyError, match="mode must be 'mean' or 'broadcast'"):
        bnkit.distribute_stats(model, "sum")
    with pytest.raises(PolicyError, match="timeout must be a positive number"):
        bnkit.distribute_stats(model, timeout=0)
