"""Diagnostics: what the BatchNorm layers of a model really do, and what is wrong with them.

* :func:`bnkit.report` — one row per layer: the behaviour now, settings, running statistics;
* :func:`bnkit.check` — findings with a stable ``kind``, a severity and a fix;
* :func:`bnkit.watch` — a context manager that records, step by step, what each layer did.

The functions are exported at the top level (``bnkit.report`` …); this package holds the
classes they return and the rule table (:mod:`bnkit.diagnostics.rules`, :func:`kinds`).
"""

from bnkit.diagnostics.check import check
from bnkit.diagnostics.findings import Finding, Severity
from bnkit.diagnostics.report import LayerRow, Report, report
from bnkit.diagnostics.rules import kinds
from bnkit.diagnostics.watch import LayerStep, Watch, watch

__all__ = [
    "Finding",
    "LayerRow",
    "LayerStep",
    "Report",
    "Severity",
    "Watch",
    "check",
    "kinds",
    "report",
    "watch",
]
