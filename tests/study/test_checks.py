"""The directional checks' PASS/FAIL/NOT RUN logic, on hand-made result rows."""

from __future__ import annotations

from typing import Any

import pytest

from bnkit.study.checks import CHECKS, run_checks
from bnkit.study.results import Results

POOL = 100


def row(strategy: str, acc: float, seed: int, **kw: Any) -> dict[str, Any]:
    base = {
        "protocol": "test_time",
        "model": "bn",
        "strategy": strategy,
        "shift": "contrast",
        "family": "photometric",
        "severity": 5,
        "stream": "iid",
        "batch_size": 0,
        "n": 0,
        "k": 0,
        "lr": 0.0,
        "seed": seed,
        "accuracy": acc,
        "ece": 0.1,
        "nonfinite": 0.0,
        "wall_s": 0.1,
        "images_per_s": 1.0,
    }
    base.update(kw)
    return base


def results(rows: list[dict[str, Any]]) -> Results:
    config = {
        "severities": [5],
        "finetune": {"batch_sizes": [2, 32]},
        "test_time": {"batch_sizes": [1, 64]},
    }
    return Results(rows, config, {"pool_size": POOL, "classes": 10})


def by_name(r: Results) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in run_checks(r)}


def seeds(strategy: str, accs: list[float], **kw: Any) -> list[dict[str, Any]]:
    return [row(strategy, a, s, **kw) for s, a in enumerate(accs)]


def test_much_greater_needs_a_big_and_significant_gap() -> None:
    src = seeds("source", [0.20, 0.22, 0.18, 0.21, 0.19])
    big = seeds("adabn", [0.70, 0.72, 0.69, 0.71, 0.73], n=POOL)
    small = seeds("adabn", [0.22, 0.24, 0.20, 0.23, 0.21], n=POOL)  # +2 points: significant only
    noisy = seeds("adabn", [0.9, 0.1, 0.9, 0.1, 0.5], n=POOL)
    assert by_name(results(src + big))["adabn_photometric"]["status"] == "PASS"
    assert by_name(results(src + small))["adabn_photometric"]["status"] == "FAIL"
    assert by_name(results(src + noisy))["adabn_photometric"]["status"] == "FAIL"
    other_n = seeds("adabn", [0.70, 0.72, 0.69, 0.71, 0.73], n=16)  # not the whole pool
    assert by_name(results(src + other_n))["adabn_photometric"]["status"] == "NOT RUN"


def test_checks_pair_by_seed() -> None:
    # the seeds differ a lot, but adabn beats source by ~10 points in every one of them
    src = seeds("source", [0.1, 0.5, 0.3, 0.7, 0.2])
    ada = seeds("adabn", [0.21, 0.59, 0.41, 0.8, 0.3], n=POOL)
    check = by_name(results(src + ada))["adabn_photometric"]
    assert check["status"] == "PASS"
    assert "Δ +10.2 ± " in check["measured"] and "(photometric shifts" in check["measured"]


def test_less_than_needs_the_interval_below_zero() -> None:
    unshifted = {"shift": "none", "family": "none", "severity": 0}
    src = seeds("source", [0.9, 0.91, 0.92], **unshifted)
    tb1 = seeds("test_batch", [0.3, 0.35, 0.32], batch_size=1, **unshifted)
    fine = seeds("test_batch", [0.95, 0.96, 0.9], batch_size=1, **unshifted)
    assert by_name(results(src + tb1))["test_batch_collapse"]["status"] == "PASS"
    assert by_name(results(src + fine))["test_batch_collapse"]["status"] == "FAIL"


def test_not_worse_passes_within_noise_and_fails_when_measurably_worse() -> None:
    ft = {"protocol": "finetune", "batch_size": 2, "lr": 1e-3, "k": 5}
    pt = seeds("pytorch", [0.80, 0.82, 0.78], **ft)
    close = seeds("frozen_stats", [0.81, 0.79, 0.78], **ft)
    worse = seeds("frozen_stats", [0.30, 0.31, 0.29], **ft)
    other_bs = seeds("frozen_stats", [0.30, 0.31, 0.29], **{**ft, "batch_size": 32})
    assert by_name(results(pt + close + other_bs))["frozen_small_batch"]["status"] == "PASS"
    assert by_name(results(pt + worse))["frozen_small_batch"]["status"] == "FAIL"


def test_bn_only_against_chance_and_missing_rows() -> None:
    where = {"protocol": "bn_only", "shift": "source", "family": "none"}
    assert (
        by_name(results(seeds("scratch", [0.6, 0.7, 0.65], **where)))["bn_only"]["status"] == "PASS"
    )
    assert (
        by_name(results(seeds("scratch", [0.15, 0.2, 0.1], **where)))["bn_only"]["status"] == "FAIL"
    )
    every = by_name(results([]))
    assert {c["status"] for c in every.values()} == {"NOT RUN"}
    assert len(every) == len(CHECKS)


@pytest.mark.parametrize("check", CHECKS)
def test_every_check_names_its_source_and_rule(check: Any) -> None:
    out = check(results([]))
    assert out["source"] and out["rule"] and out["claim"]
    assert out["status"] == "NOT RUN"
