"""Directional checks: what the literature says should happen, measured on this study's rows.

Each check compares two selections of rows, paired by seed (the same data, shifted images and
source model), and reports PASS, FAIL or NOT RUN (the grid lacks the rows it needs), with the
numbers and the source of the expectation. The rules:

* "A > B" and "A ≫ B" need the 95% CI of the paired difference A − B above 0 (≫ also needs a
  mean difference of at least 5 points);
* "A ≥ B" needs the CI's upper end at or above 0 (A not measurably worse than B);
* "A < B" needs the CI below 0; "brings little" needs a mean gain under 5 points.

A FAIL is a finding of this study, not an error: the report says what was measured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bnkit.study.metrics import Summary
from bnkit.study.results import Results

__all__ = ["CHECKS", "run_checks"]

Check = Callable[[Results], dict[str, Any]]
BIG = 0.05
"""The mean difference (5 points of accuracy) that "≫" and "brings little" refer to."""


def _pct(s: Summary) -> str:
    return s.percent()


def _signed(s: Summary) -> str:
    text = s.percent()
    return text if text.startswith("-") or text == "–" else f"+{text}"


def _result(
    name: str, claim: str, source: str, rule: str, status: str, measured: str
) -> dict[str, Any]:
    return {
        "name": name,
        "claim": claim,
        "source": source,
        "rule": rule,
        "status": status,
        "measured": measured,
    }


def _sweep(results: Results) -> int:
    sev = [int(s) for s in results.config["severities"]]
    return max(sev) if sev else 0


def _shifted(results: Results, family: str | None = None) -> dict[str, Any]:
    """Selection: shifted targets at their sweep severity (optionally one family)."""
    sweep = _sweep(results)
    sel: dict[str, Any] = {
        "shift": lambda s: s != "none",
        "severity": lambda v: v == sweep or v == 0,
    }
    if family is not None:
        sel["family"] = family
    return sel


def _compare(
    results: Results, a: dict[str, Any], b: dict[str, Any], test: Callable[[Summary], bool]
) -> tuple[str, Summary, Summary, Summary]:
    sa, sb = results.summary(**a), results.summary(**b)
    diff = results.paired(a, b)
    if diff.n == 0:
        return "NOT RUN", sa, sb, diff
    return ("PASS" if test(diff) else "FAIL"), sa, sb, diff


def _greater(d: Summary) -> bool:
    return d.ci == d.ci and d.mean - d.ci > 0


def _much_greater(d: Summary) -> bool:
    return _greater(d) and d.mean >= BIG


def _not_worse(d: Summary) -> bool:
    return d.ci != d.ci or d.mean + d.ci >= 0


def _less(d: Summary) -> bool:
    return d.ci == d.ci and d.mean + d.ci < 0


def _pair_text(la: str, sa: Summary, lb: str, sb: Summary, d: Summary, where: str) -> str:
    return f"{la} {_pct(sa)} vs {lb} {_pct(sb)}: Δ {_signed(d)} points ({where}; {d.n} seeds)"


def _tt(strategy: str, **more: Any) -> dict[str, Any]:
    return {"protocol": "test_time", "model": "bn", "strategy": strategy, **more}


def _adabn_all(results: Results) -> dict[str, Any]:
    return _tt("adabn", n=results.meta.get("pool_size", -1))


def adabn_photometric(r: Results) -> dict[str, Any]:
    a = {**_adabn_all(r), **_shifted(r, "photometric")}
    b = {**_tt("source"), **_shifted(r, "photometric")}
    status, sa, sb, d = _compare(r, a, b, _much_greater)
    return _result(
        "adabn_photometric",
        "AdaBN ≫ source statistics on photometric shifts",
        "Schneider et al. 2020; Li et al. 2016 (AdaBN)",
        "paired Δ ≥ 5 points, 95% CI above 0",
        status,
        _pair_text("adabn", sa, "source", sb, d, "photometric shifts, highest severity"),
    )


def batch1_collapse(r: Results) -> dict[str, Any]:
    sweep = {"severity": lambda v: v == _sweep(r) or v == 0, "stream": "iid"}
    a = {**_tt("test_batch", batch_size=1), **sweep}
    b = {**_tt("source"), **sweep}
    status, sa, sb, d = _compare(r, a, b, _less)
    return _result(
        "test_batch_collapse",
        "test-batch statistics collapse at batch size 1 (below source statistics)",
        "Nado et al. 2020; Lim et al. 2023 (TTN); Niu et al. 2023 (SAR)",
        "paired Δ(test_batch@1 − source) CI below 0",
        status,
        _pair_text("test_batch@1", sa, "source", sb, d, "all targets incl. unshifted"),
    )


def frozen_small_batch(r: Results) -> dict[str, Any]:
    sizes = sorted({int(b) for b in r.config["finetune"]["batch_sizes"]})
    bs = sizes[0] if sizes else 0
    base = {"protocol": "finetune", "model": "bn", "batch_size": bs}
    a, b = {**base, "strategy": "frozen_stats"}, {**base, "strategy": "pytorch"}
    status, sa, sb, d = _compare(r, a, b, _not_worse)
    return _result(
        "frozen_small_batch",
        f"frozen statistics ≥ trainable BN when fine-tuning at batch size {bs}",
        "Wu & He 2018 (GroupNorm, small-batch BN); detectron2's FrozenBN default",
        "paired Δ(frozen_stats − pytorch) CI reaches 0 or above",
        status,
        _pair_text("frozen_stats", sa, "pytorch", sb, d, "fine-tuning shifts, all k and lr"),
    )


def tent_vs_adabn(r: Results) -> dict[str, Any]:
    a = {**_tt("tent", stream="iid"), **_shifted(r)}
    b = {**_adabn_all(r), **_shifted(r)}
    status, sa, sb, d = _compare(r, a, b, _not_worse)
    return _result(
        "tent_vs_adabn",
        "TENT ≥ AdaBN",
        "Wang et al. 2021 (TENT)",
        "paired Δ(tent − adabn) CI reaches 0 or above",
        status,
        _pair_text("tent", sa, "adabn", sb, d, "shifted targets, highest severity, i.i.d."),
    )


def tent_stress(r: Results) -> dict[str, Any]:
    a = {**_tt("tent_stress"), **_shifted(r)}
    b = {**_tt("tent", stream="iid"), **_shifted(r)}
    status, sa, sb, d = _compare(r, a, b, _less)
    ece = f"; ECE {_pct(r.summary('ece', **b))} → {_pct(r.summary('ece', **a))}" if d.n else ""
    return _result(
        "tent_stress",
        "TENT degrades under a high learning rate and several passes",
        "TENT repository, issue #7 (accuracy falls with more epochs)",
        "paired Δ(tent_stress − tent) accuracy CI below 0",
        status,
        _pair_text("tent_stress", sa, "tent", sb, d, "shifted targets, highest severity") + ece,
    )


def sorted_stream(r: Results) -> dict[str, Any]:
    sweep = {"severity": lambda v: v == _sweep(r) or v == 0, "batch_size": lambda b: b > 1}
    a = {**_tt("test_batch", stream="sorted"), **sweep}
    b = {**_tt("test_batch", stream="iid"), **sweep}
    status, sa, sb, d = _compare(r, a, b, _less)
    return _result(
        "sorted_stream",
        "label-sorted streams hurt test-batch statistics",
        "Niu et al. 2023 (SAR); Zhao et al. 2023 (TTAB); Lim et al. 2023 (TTN)",
        "paired Δ(sorted − iid) CI below 0",
        status,
        _pair_text("sorted", sa, "iid", sb, d, "test_batch at batch sizes > 1, all targets"),
    )


def prior_small_batch(r: Results) -> dict[str, Any]:
    sweep = {"severity": lambda v: v == _sweep(r) or v == 0, "stream": "iid"}
    small = {"batch_size": lambda b: 1 <= b <= 4}
    a = {**_tt("prior"), **sweep, **small}
    b = {**_tt("test_batch"), **sweep, **small}
    status, sa, sb, d = _compare(r, a, b, _greater)
    return _result(
        "prior_small_batch",
        "prior mixing (N=16) > test-batch statistics at batch sizes ≤ 4",
        "Schneider et al. 2020",
        "paired Δ(prior − test_batch) CI above 0",
        status,
        _pair_text("prior", sa, "test_batch", sb, d, "batch sizes ≤ 4, all targets"),
    )


def adabn_vs_groupnorm(r: Results) -> dict[str, Any]:
    a = {**_adabn_all(r), **_shifted(r, "photometric")}
    b = {"protocol": "test_time", "model": "gn", "strategy": "source", **_shifted(r, "photometric")}
    status, sa, sb, d = _compare(r, a, b, _greater)
    return _result(
        "adabn_vs_groupnorm",
        "adapted BN > the unadapted GroupNorm twin on photometric shifts",
        "Schneider et al. 2020 (BN+adaptation beats GroupNorm and Fixup)",
        "paired Δ(adabn − GroupNorm source) CI above 0",
        status,
        _pair_text("adabn", sa, "GroupNorm", sb, d, "photometric shifts, highest severity"),
    )


def rotation_control(r: Results) -> dict[str, Any]:
    a = {**_adabn_all(r), "shift": "rotation"}
    b = {**_tt("source"), "shift": "rotation"}
    status, sa, sb, d = _compare(r, a, b, lambda d: d.mean < BIG)
    return _result(
        "rotation_control",
        "on the rotation control, adaptation brings little",
        "mechanism: rotation keeps pixel statistics (MNIST-C's geometric corruptions)",
        "mean gain of adabn over source below 5 points",
        status,
        _pair_text("adabn", sa, "source", sb, d, "rotation, all severities"),
    )


def bn_only(r: Results) -> dict[str, Any]:
    rows = r.select(protocol="bn_only")
    chance = 1.0 / float(r.meta.get("classes", 10))
    s = r.summary(protocol="bn_only")
    if not rows:
        status = "NOT RUN"
    else:
        status = "PASS" if s.mean >= 3 * chance and s.mean - s.ci > chance else "FAIL"
    return _result(
        "bn_only",
        "training only BN gamma/beta of a random network ≫ chance",
        "Frankle et al. 2021",
        f"accuracy ≥ 3× chance ({300 * chance:.0f}%), CI above chance",
        status,
        f"BN-only {_pct(s)}% on held-out source digits vs chance {100 * chance:.0f}% ({s.n} seeds)",
    )


CHECKS: tuple[Check, ...] = (
    adabn_photometric,
    adabn_vs_groupnorm,
    batch1_collapse,
    prior_small_batch,
    sorted_stream,
    tent_vs_adabn,
    tent_stress,
    rotation_control,
    frozen_small_batch,
    bn_only,
)
"""Every check, in report order."""


def run_checks(results: Results) -> list[dict[str, Any]]:
    """The outcome of every check on ``results``."""
    return [check(results) for check in CHECKS]
