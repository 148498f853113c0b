"""Running statistics as data: recalibration, statistic sets and banks.

* :mod:`~bnkit.stats.recalibrate` — recompute running statistics on data
  (:mod:`~bnkit.stats.estimators` say how, :mod:`~bnkit.stats.recal_pass` runs the pass);
* :mod:`~bnkit.stats.sets` — statistic sets: capture, save, load;
* :mod:`~bnkit.stats.bank` — named sets kept on a model (one per domain).
"""

from bnkit.stats.bank import StatBank, stat_bank
from bnkit.stats.recalibrate import recalibrate
from bnkit.stats.sets import LayerStats, StatSet, capture_stats, load_stats

__all__ = [
    "LayerStats",
    "StatBank",
    "StatSet",
    "capture_stats",
    "load_stats",
    "recalibrate",
    "stat_bank",
]
