r"""Summaries over seeds: mean ± the half-width of a Student-t confidence interval.

Over :math:`n` seeds a number is reported as mean ± :math:`t_{q,\,n-1}\, s/\sqrt{n}` with the
sample standard deviation :math:`s` and :math:`q = (1 + \text{level})/2`; with one seed the
half-width is ``nan`` (unknown), and a verdict that needs it is NOT RUN. A difference of two
strategies is summarized over the per-seed differences (paired by seed: the same data, shifted
images and source model).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

__all__ = ["Summary", "summarize", "t_quantile"]


class Summary(tuple[float, float, int]):
    """``(mean, half-width of the CI, number of values)``; prints as ``mean ± ci``."""

    __slots__ = ()

    def __new__(cls, mean: float, ci: float, n: int) -> Summary:
        return super().__new__(cls, (mean, ci, n))

    @property
    def mean(self) -> float:
        return self[0]

    @property
    def ci(self) -> float:
        return self[1]

    @property
    def n(self) -> int:
        return self[2]

    @property
    def low(self) -> float:
        """Lower end of the interval (nan when unknown)."""
        return self.mean - self.ci

    @property
    def high(self) -> float:
        """Upper end of the interval (nan when unknown)."""
        return self.mean + self.ci

    def signed(self, digits: int = 1) -> str:
        """``"+3.1 ± 0.4"``: a difference in points, with its sign."""
        text = self.percent(digits)
        return text if text.startswith("-") or text == "–" else f"+{text}"

    def percent(self, digits: int = 1) -> str:
        """``"97.3 ± 0.4"`` for accuracies in [0, 1]."""
        if math.isnan(self.mean):
            return "–"
        if math.isnan(self.ci):
            return f"{100 * self.mean:.{digits}f}"
        return f"{100 * self.mean:.{digits}f} ± {100 * self.ci:.{digits}f}"


@functools.lru_cache(maxsize=256)
def t_quantile(dof: int, q: float = 0.975) -> float:
    """The ``q`` quantile of Student's t distribution with ``dof`` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(q, dof))


def summarize(values: Sequence[float], level: float = 0.95) -> Summary:
    """Mean and t-interval half-width (at ``level``) of ``values`` (one per seed)."""
    n = len(values)
    if n == 0:
        return Summary(math.nan, math.nan, 0)
    mean = math.fsum(values) / n
    if n == 1:
        return Summary(mean, math.nan, 1)
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return Summary(mean, t_quantile(n - 1, (1 + level) / 2) * math.sqrt(var / n), n)
