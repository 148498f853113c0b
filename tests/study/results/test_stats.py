"""Mean ± the Student-t interval over seeds, at the declared level."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from bnkit.study.results.stats import summarize


def test_summary_is_the_t_interval() -> None:
    values = [0.8, 0.9, 0.85, 0.95, 0.7]
    s = summarize(values)
    sem = stats.sem(values)
    assert s.mean == pytest.approx(0.84)
    assert s.ci == pytest.approx(stats.t.ppf(0.975, 4) * sem)
    assert s.ci == pytest.approx(2.7764451 * sem)
    lo, hi = stats.t.interval(0.95, 4, loc=s.mean, scale=sem)
    assert (s.mean - s.ci, s.mean + s.ci) == pytest.approx((lo, hi))
    assert s.n == 5 and s.percent() == f"{84.0:.1f} ± {100 * s.ci:.1f}"


def test_summary_of_one_or_no_values() -> None:
    one = summarize([0.5])
    assert one.mean == 0.5 and math.isnan(one.ci) and one.percent() == "50.0"
    assert summarize([]).n == 0 and summarize([]).percent() == "–"


def test_the_level_widens_or_narrows_the_interval() -> None:
    values = [0.8, 0.9, 0.85, 0.95, 0.7]
    s95, s99 = summarize(values), summarize(values, level=0.99)
    assert s99.ci > s95.ci and s99.mean == s95.mean
    assert s99.ci == pytest.approx(stats.t.ppf(0.995, 4) * stats.sem(values))
    assert (s95.low, s95.high) == pytest.approx((s95.mean - s95.ci, s95.mean + s95.ci))
    assert summarize([0.01, 0.03]).signed().startswith("+")
    assert summarize([-0.01, -0.03]).signed().startswith("-")
