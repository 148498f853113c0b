"""Every rule both ways on hand-made rows: PASS when the claim holds, FAIL when the rows
contradict it, NOT RUN without an interval, never PASS on an undefined one."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from tests.study.results.world import results, universe

from bnkit.study.results.checks import CHECKS, run_checks
from bnkit.study.results.rules import Rule, decide, run_rules
from bnkit.study.results.stats import Summary

DELTA = {
    # kind: (A − B when the claim holds, A − B when the rows contradict it)
    "greater": (0.2, -0.2),
    "less": (-0.2, 0.2),
    "not_worse": (0.0, -0.2),
    "within": (0.01, 0.2),
}


def shaped(rule: Rule, holds: bool, seeds: int = 5) -> list[dict[str, Any]]:
    """The universe with rule A's rows moved to B's value ± the kind's difference."""
    rows = copy.deepcopy(universe(seeds))
    base = results(rows, seeds)
    delta = DELTA[rule.kind][0 if holds else 1]
    picked = {id(r) for r in base.select(**rule.a(base))}
    assert picked or seeds < 2, f"{rule.name}: selection A matches no hand-made row"
    twice_chance = 2 * 0.1
    for row in (r for r in rows if id(r) in picked):
        jitter = 0.002 * (row["seed"] % 3)  # a defined, small interval
        if rule.b is None:
            value = twice_chance + (0.4 if holds else -0.1)
        else:
            value = row["accuracy"] + delta
        row["accuracy"] = row["val_accuracy"] = value + jitter
    return rows


@pytest.mark.parametrize("rule", CHECKS, ids=lambda r: r.name)
def test_each_rule_passes_when_its_claim_holds(rule: Rule) -> None:
    out = {c["name"]: c for c in run_checks(results(shaped(rule, True)))}[rule.name]
    assert out["status"] == "PASS", out


@pytest.mark.parametrize("rule", CHECKS, ids=lambda r: r.name)
def test_each_rule_fails_when_the_rows_contradict_it(rule: Rule) -> None:
    out = {c["name"]: c for c in run_checks(results(shaped(rule, False)))}[rule.name]
    assert out["status"] == "FAIL", out


@pytest.mark.parametrize("rule", CHECKS, ids=lambda r: r.name)
def test_one_seed_is_not_run_never_pass(rule: Rule) -> None:
    out = {c["name"]: c for c in run_checks(results(shaped(rule, True, seeds=1), 1))}[rule.name]
    assert out["status"] == "NOT RUN" and "at least 2 seeds" in out["measured"]


@pytest.mark.parametrize("rule", CHECKS, ids=lambda r: r.name)
def test_every_rule_names_its_source_and_margin(rule: Rule) -> None:
    out = run_rules((rule,), results([]))[0]
    assert out["source"] and out["claim"] and "CI" in out["rule"]
    assert out["status"] == "NOT RUN"


@pytest.mark.parametrize(
    ("kind", "mean", "ci", "margin", "want"),
    [
        ("greater", 0.10, 0.02, 0.05, "PASS"),
        ("greater", 0.06, 0.02, 0.05, "UNDECIDED"),
        ("greater", 0.02, 0.02, 0.05, "FAIL"),  # better, but not by the margin
        ("less", -0.10, 0.02, 0.0, "PASS"),
        ("less", 0.0, 0.02, 0.0, "UNDECIDED"),
        ("less", 0.10, 0.02, 0.0, "FAIL"),
        ("not_worse", -0.005, 0.002, 0.01, "PASS"),  # worse, but within the margin
        ("not_worse", -0.01, 0.02, 0.01, "UNDECIDED"),
        ("not_worse", -0.10, 0.02, 0.01, "FAIL"),
        ("within", 0.01, 0.02, 0.05, "PASS"),
        ("within", 0.04, 0.02, 0.05, "UNDECIDED"),
        ("within", -0.10, 0.02, 0.05, "FAIL"),
        ("greater", 0.30, math.nan, 0.0, "NOT RUN"),  # one seed: no interval
    ],
)
def test_decide_uses_the_interval_and_the_margin(
    kind: str, mean: float, ci: float, margin: float, want: str
) -> None:
    assert decide(kind, Summary(mean, ci, 5 if ci == ci else 1), margin) == want


def test_a_shift_that_does_not_hurt_the_source_is_left_out() -> None:
    rule = next(r for r in CHECKS if r.name == "adabn_photometric")
    rows = shaped(rule, True)
    for row in rows:  # the source model is fine on contrast: no shift to fix
        if row["shift"] == "contrast" and row["strategy"] == "source":
            row["accuracy"] = 0.99
    out = {c["name"]: c for c in run_checks(results(rows))}["adabn_photometric"]
    assert out["status"] == "NOT RUN"


def test_bonferroni_is_stricter_and_counts_the_rules_that_ran() -> None:
    rule = next(r for r in CHECKS if r.name == "adabn_real")
    rows = shaped(rule, True)
    for row in rows:  # a gain that is significant at 95% but noisy
        if row["strategy"] == "adabn" and row["shift"] == "mnist_to_digits" and row["n"] == 0:
            row["accuracy"] = 0.3 + (0.05, 0.01, 0.06, 0.0, 0.05)[row["seed"]]
    out = {c["name"]: c for c in run_checks(results(rows))}
    assert out["adabn_real"]["status"] == "PASS"
    assert out["adabn_real"]["bonferroni"] == "UNDECIDED"
    assert out["adabn_real"]["rules_run"] == sum(c["status"] != "NOT RUN" for c in out.values())


def test_fine_tuning_rules_use_the_chosen_learning_rate_only() -> None:
    """Regression: the fine-tuning rules averaged every learning rate of the sweep, so a
    diverged lr 1e-2 made frozen statistics look 36 points worse than at their chosen lr."""
    rows = []
    for row in universe():
        if row["protocol"] == "finetune":
            rows.append({**row, "lr": 1e-3})
            if row["strategy"] == "frozen_stats":  # a rate where frozen statistics diverge
                rows.append({**row, "lr": 1e-2, "accuracy": 0.0, "val_accuracy": 0.0})
        else:
            rows.append(row)
    for row in rows:
        if row["protocol"] == "finetune" and row["lr"] == 1e-3:
            row["accuracy"] += 0.001 * row["seed"]
    out = {c["name"]: c for c in run_checks(results(rows))}["frozen_small_batch"]
    assert out["status"] == "PASS", out
