"""Diagnostics: what the BatchNorm layers of a model really do, and what is wrong with them.

* :func:`bnkit.report` — one row per layer: the behaviour now, settings, running statistics;
* :func:`bnkit.check` — findings with a stable ``kind``, a severity and a fix;
* :func:`bnkit.watch` — a context manager that records, step by step, what each layer did.

The functions are exported at the top level (``bnkit.report`` …); this package holds the
classes they return and the rule table (:func:`kinds`).
"""

# Importing the rule modules registers their rules, in this order (the order of kinds()).
# isort: off
from bnkit.diagnostics import _rules_phase, _rules_stats  # noqa: F401
from bnkit.diagnostics import _rules_input, _rules_layout, _rules_optim  # noqa: F401

# isort: on
from bnkit.diagnostics.check import check
from bnkit.diagnostics.findings import Finding, Severity, kinds
from bnkit.diagnostics.report import LayerRow, Report, report
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
