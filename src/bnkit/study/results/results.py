"""The results of a study as plain data: rows, the configuration, the checks, facts about the run.

:class:`Results` holds nothing but lists, dicts, strings and numbers, so it can be saved as JSON,
loaded back (:meth:`Results.load`) and rendered later (:mod:`bnkit.study.report`) without
running anything. :meth:`Results.select`, :meth:`Results.summary` and :meth:`Results.paired`
are the queries the report, the checks and notebooks use; intervals are at the level declared in
the configuration's ``[verdicts]`` (95% by default).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path
from typing import Any

from bnkit.study.atomic import atomic_write
from bnkit.study.execution.cells import ROW_FIELDS
from bnkit.study.results.stats import Summary, summarize

__all__ = ["Results"]

Row = dict[str, Any]


@dataclasses.dataclass
class Results:
    """A finished study.

    Attributes:
        rows: one dict per cell and seed, with the keys of ``ROW_FIELDS``.
        config: the configuration (``StudyConfig.to_dict()``).
        meta: facts about the run: bench description, source models, device, timings, counts.
        checks: the directional checks (dicts from :mod:`bnkit.study.results.rules`).
    """

    rows: list[Row]
    config: dict[str, Any]
    meta: dict[str, Any]
    checks: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    # ------------------------------------------------------------------ queries
    @property
    def level(self) -> float:
        """The confidence level of every interval."""
        return float(self.config.get("verdicts", {}).get("level", 0.95))

    def select(self, **where: Any) -> list[Row]:
        """Rows whose fields equal the given values (a callable value is a predicate)."""
        out = []
        for row in self.rows:
            if all(
                bool(want(row[key])) if callable(want) else row[key] == want
                for key, want in where.items()
            ):
                out.append(row)
        return out

    def per_seed(self, metric: str = "accuracy", **where: Any) -> dict[int, float]:
        """Mean of ``metric`` per seed over the selected rows (averaging over the other axes)."""
        sums: dict[int, list[float]] = {}
        for row in self.select(**where):
            value = row[metric]
            if value is not None and value == value:  # a NaN ECE (no finite logits) is skipped
                sums.setdefault(int(row["seed"]), []).append(float(value))
        return {seed: sum(v) / len(v) for seed, v in sorted(sums.items())}

    def summary(self, metric: str = "accuracy", **where: Any) -> Summary:
        """Mean ± CI over seeds of the per-seed mean of ``metric`` over the selection."""
        return summarize(list(self.per_seed(metric, **where).values()), self.level)

    def per_target(self, metric: str = "accuracy", **where: Any) -> dict[tuple[Any, ...], float]:
        """Mean of ``metric`` per (seed, shift, severity) over the selected rows."""
        sums: dict[tuple[Any, ...], list[float]] = {}
        for row in self.select(**where):
            value = row[metric]
            if value is not None and value == value:
                key = (int(row["seed"]), row["shift"], int(row["severity"]))
                sums.setdefault(key, []).append(float(value))
        return {key: sum(v) / len(v) for key, v in sums.items()}

    def differences(
        self, a: dict[str, Any], b: dict[str, Any], metric: str = "accuracy"
    ) -> list[float]:
        """Per-seed (selection ``a`` − selection ``b``), paired by seed and target.

        Within a seed, the difference is taken on every target (shift, severity) both
        selections have, then averaged over those targets; seeds without a common target
        are left out.
        """
        pa, pb = self.per_target(metric, **a), self.per_target(metric, **b)
        by_seed: dict[int, list[float]] = {}
        for key in sorted(set(pa) & set(pb)):
            by_seed.setdefault(key[0], []).append(pa[key] - pb[key])
        return [sum(v) / len(v) for _, v in sorted(by_seed.items())]

    def paired(self, a: dict[str, Any], b: dict[str, Any], metric: str = "accuracy") -> Summary:
        """Mean ± CI over seeds of (selection ``a`` − selection ``b``), paired by seed."""
        return summarize(self.differences(a, b, metric), self.level)

    def values(self, field: str, **where: Any) -> list[Any]:
        """The distinct values of ``field`` among the selected rows, in first-seen order."""
        seen: dict[Any, None] = {}
        for row in self.select(**where):
            seen.setdefault(row[field], None)
        return list(seen)

    # ------------------------------------------------------------------ files
    def to_json(self) -> str:
        """Strict JSON (NaN becomes null)."""
        return json.dumps(_plain(dataclasses.asdict(self)), indent=1, allow_nan=False)

    def to_csv(self) -> str:
        """The rows as CSV, one line per row (a learning curve as ``;``-separated values)."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(ROW_FIELDS), lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow(
                {
                    k: ";".join(f"{v:.4f}" for v in row[k]) if k == "curve" else row[k]
                    for k in ROW_FIELDS
                }
            )
        return buf.getvalue()

    def save(self, out: str | Path) -> None:
        """Write ``results.json`` and ``results.csv`` into ``out`` (each atomically)."""
        atomic_write(Path(out) / "results.json", self.to_json())
        atomic_write(Path(out) / "results.csv", self.to_csv())

    @classmethod
    def load(cls, path: str | Path) -> Results:
        """Results from a ``results.json`` file or a study folder holding one."""
        p = Path(path)
        if p.is_dir():
            p = p / "results.json"
        data = json.loads(p.read_text(encoding="utf-8"))
        return cls(data["rows"], data["config"], data["meta"], data.get("checks", []))


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
