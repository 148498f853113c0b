"""Verdicts: one rule shape, evaluated on paired differences with their confidence interval.

A rule compares selection A with selection B (or with a constant), per seed, and summarizes the
differences A − B as mean ± the half-width of the t-interval at the declared level. Four kinds,
each with a stated margin m (accuracy, 0–1):

==========  ====================  ==========================  ==========================
kind        claim                 PASS                        FAIL
==========  ====================  ==========================  ==========================
greater     A − B > m             interval above m            interval below m
less        A − B < −m            interval below −m           interval above −m
not_worse   A − B > −m            interval above −m           interval below −m
within      |A − B| < m           interval inside (−m, m)     interval outside (−m, m)
==========  ====================  ==========================  ==========================

Otherwise the verdict is UNDECIDED (the interval contains the margin: no detectable
difference at this size). Fewer than two paired seeds give no interval: NOT RUN, never PASS.
The report states how many rules ran; each verdict is also recomputed at the
Bonferroni-corrected level (1 − (1 − level)/rules) and the report says which still hold.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from bnkit.study.results.results import Results
from bnkit.study.results.stats import Summary, summarize

__all__ = ["KINDS", "Rule", "decide", "evaluate", "run_rules"]

Selection = Callable[[Results], dict[str, Any]]
KINDS = ("greater", "less", "not_worse", "within")


@dataclasses.dataclass(frozen=True)
class Rule:
    """A directional check stated before the run.

    Attributes:
        name: short identifier.
        claim: the expectation, in words.
        source: where the expectation comes from.
        kind: one of :data:`KINDS`.
        margin: a ``[verdicts]`` setting name ("big", "non_inferiority") or "zero".
        a, b: the selections compared (b None: compare with ``baseline``).
        where: what the selections cover, in words.
        labels: names of A and B in the measured text.
        baseline: a constant B (for example twice chance), when ``b`` is None.
    """

    name: str
    claim: str
    source: str
    kind: str
    margin: str
    a: Selection
    b: Selection | None
    where: str
    labels: tuple[str, str]
    baseline: Callable[[Results], float] | None = None


def decide(kind: str, d: Summary, m: float) -> str:
    """The verdict of a rule of ``kind`` with margin ``m`` on the difference ``d``."""
    if d.n < 2 or d.ci != d.ci:
        return "NOT RUN"
    lo, hi = d.low, d.high
    if kind == "greater":
        return "PASS" if lo > m else "FAIL" if hi < m else "UNDECIDED"
    if kind == "less":
        return "PASS" if hi < -m else "FAIL" if lo > -m else "UNDECIDED"
    if kind == "not_worse":
        return "PASS" if lo > -m else "FAIL" if hi < -m else "UNDECIDED"
    if kind == "within":
        return "PASS" if -m < lo and hi < m else "FAIL" if lo > m or hi < -m else "UNDECIDED"
    raise ValueError(f"kind must be one of {KINDS} (got {kind!r})")


def _margin(rule: Rule, r: Results) -> float:
    if rule.margin == "zero":
        return 0.0
    return float(r.config.get("verdicts", {}).get(rule.margin, 0.0))


def _text(kind: str, m: float, level: float) -> str:
    pts = f"{100 * m:g} points"
    need = {
        "greater": f"above +{pts}",
        "less": f"below −{pts}",
        "not_worse": f"above −{pts} (non-inferiority margin)",
        "within": f"inside ±{pts}",
    }[kind]
    return f"paired Δ(A − B): {100 * level:g}% CI {need}"


def _differences(rule: Rule, r: Results) -> tuple[list[float], Summary, Summary]:
    a = rule.a(r)
    sa = r.summary(**a)
    if rule.b is None:
        base = rule.baseline(r) if rule.baseline is not None else 0.0
        values = [v - base for v in r.per_seed(**a).values()]
        return values, sa, summarize([base] * len(values), r.level)
    b = rule.b(r)
    return r.differences(a, b), sa, r.summary(**b)


def evaluate(rule: Rule, r: Results) -> dict[str, Any]:
    """The outcome of ``rule`` on ``r``: status, numbers and the text of each."""
    m = _margin(rule, r)
    values, sa, sb = _differences(rule, r)
    d = summarize(values, r.level)
    status = decide(rule.kind, d, m)
    la, lb = rule.labels
    measured = (
        f"{la} {sa.percent()} vs {lb} {sb.percent()}: Δ {d.signed()} points "
        f"({rule.where}; {d.n} seeds)"
    )
    if status == "NOT RUN":
        measured = f"needs rows of {la} and {lb} ({rule.where}) in at least 2 seeds; found {d.n}"
    return {
        "name": rule.name,
        "claim": rule.claim,
        "source": rule.source,
        "rule": _text(rule.kind, m, r.level),
        "status": status,
        "measured": measured,
        "delta": [d.mean, d.ci, d.n],
        "values": values,
        "kind": rule.kind,
        "margin": m,
    }


def run_rules(rules: tuple[Rule, ...], r: Results) -> list[dict[str, Any]]:
    """Every rule's outcome, with the multiplicity-corrected status (``"bonferroni"``)."""
    out = [evaluate(rule, r) for rule in rules]
    ran = sum(c["status"] != "NOT RUN" for c in out)
    strict = 1 - (1 - r.level) / max(1, ran)
    for c in out:
        d = summarize(c["values"], strict)
        c["bonferroni"] = decide(c["kind"], d, c["margin"]) if ran else "NOT RUN"
        c["rules_run"] = ran
    return out
