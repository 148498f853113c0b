"""Stage 5, results: rows and statistics, calibration, rules, advice, tables, plots, report."""

from __future__ import annotations

__all__: list[str] = []
