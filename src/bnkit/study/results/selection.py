"""What the verdicts, tables and advice are computed on: calibrated targets, tuned learning rates.

**Calibration.** A target informs a verdict only if the shift hurts the source model: per seed,
its accuracy on the target minus its accuracy on held-out source images, and the interval of
that drop must lie below −``hurt``. A target where every test-time strategy stays within
``chance_margin`` of chance is left out too (the shift destroyed the task: nothing can be
learned from it there). Both are reported, not hidden.

**Tuned fine-tuning.** Each fine-tuning strategy's learning rate is the one of the declared
sweep with the best mean accuracy on the labelled target validation split (over seeds), chosen
separately per strategy, model, target, k and batch size; the test set never chooses.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any

from bnkit.study.results.results import Results
from bnkit.study.results.stats import Summary, summarize

__all__ = [
    "Target",
    "calibration",
    "chance",
    "informative_shifts",
    "sweep",
    "top_severity",
    "tuned",
]


@dataclasses.dataclass(frozen=True)
class Target:
    """A target's calibration: the source model's accuracy there and its drop."""

    shift: str
    severity: int
    family: str
    source: Summary
    drop: Summary
    status: str  # "reference", "informative", "does not hurt", "at chance", "NOT RUN"


def top_severity(r: Results) -> int:
    """The highest synthetic severity of the run."""
    return max((int(s) for s in r.config.get("severities", [0])), default=0)


def sweep(r: Results) -> dict[str, Any]:
    """Selection: rows on sweep targets (highest severity, unshifted, real or user)."""
    top = top_severity(r)
    return {"severity": lambda v: v in (0, top)}


def chance(r: Results) -> float:
    return 1.0 / float(r.meta.get("classes") or 10)


def _held_out(r: Results, source: str) -> dict[int, float]:
    return {
        int(m["seed"]): float(m["val_accuracy"])
        for m in r.meta.get("source_models", [])
        if m["model"] == "bn" and m.get("source", source) == source
    }


def _best(r: Results, shift: str, severity: int) -> Summary:
    """The summary of the best test-time arm (by mean) on a target."""
    best = Summary(float("-inf"), 0.0, 0)
    for strategy in r.values("strategy", protocol="test_time", model="bn", shift=shift):
        for n in r.values("n", protocol="test_time", strategy=strategy, shift=shift):
            s = r.summary(
                protocol="test_time",
                model="bn",
                strategy=strategy,
                shift=shift,
                severity=severity,
                n=n,
            )
            if s.n and s.mean > best.mean:
                best = s
    return best


_MEMO: dict[int, tuple[weakref.ref[Results], int, list[Target]]] = {}


def calibration(r: Results) -> list[Target]:
    """Every test-time target, with the source model's accuracy and drop (computed once per
    results object and row count)."""
    got = _MEMO.get(id(r))
    if got is not None and got[0]() is r and got[1] == len(r.rows):
        return got[2]
    out = _calibrate(r)
    key = id(r)

    def forget(_: object) -> None:
        _MEMO.pop(key, None)

    _MEMO[key] = (weakref.ref(r, forget), len(r.rows), out)
    return out


def _calibrate(r: Results) -> list[Target]:
    vd = r.config.get("verdicts", {})
    hurt, margin = float(vd.get("hurt", 0.05)), float(vd.get("chance_margin", 0.05))
    out = []
    seen: set[tuple[str, int]] = set()
    for row in r.select(protocol="test_time", model="bn", strategy="source"):
        target = (row["shift"], int(row["severity"]))
        if target in seen:
            continue
        seen.add(target)
        on = r.per_seed(
            protocol="test_time", model="bn", strategy="source", shift=target[0], severity=target[1]
        )
        held = _held_out(r, row.get("source", "digits"))
        drop = summarize([on[s] - held[s] for s in on if s in held], r.level)
        src = summarize(list(on.values()), r.level)
        if target[0] == "none":
            status = "reference"
        elif drop.n < 2:
            status = "NOT RUN"
        elif _best(r, *target).high < chance(r) + margin:
            status = "at chance"
        elif not drop.high < -hurt:
            status = "does not hurt"
        else:
            status = "informative"
        out.append(Target(target[0], target[1], row["family"], src, drop, status))
    return out


def informative_shifts(r: Results) -> set[str]:
    """Shifts whose sweep target is informative (see the module docstring)."""
    top = top_severity(r)
    return {t.shift for t in calibration(r) if t.status == "informative" and t.severity in (0, top)}


def tuned(r: Results) -> Results:
    """``r`` with every fine-tuning row that is not at its strategy's chosen learning rate
    removed; ``meta["chosen_lr"]`` lists the choices."""
    groups: dict[tuple[Any, ...], dict[float, list[float]]] = {}
    for row in r.select(protocol="finetune"):
        key = (row["model"], row["strategy"], row["shift"], row["k"], row["batch_size"])
        value = row.get("val_accuracy")
        if value is not None and value == value:
            groups.setdefault(key, {}).setdefault(float(row["lr"]), []).append(float(value))
    best = {
        key: max(lrs, key=lambda lr: (sum(lrs[lr]) / len(lrs[lr]), -lr))
        for key, lrs in groups.items()
    }

    def keep(row: dict[str, Any]) -> bool:
        if row["protocol"] != "finetune":
            return True
        key = (row["model"], row["strategy"], row["shift"], row["k"], row["batch_size"])
        return key in best and float(row["lr"]) == best[key]

    chosen = [
        {"model": k[0], "strategy": k[1], "shift": k[2], "k": k[3], "batch_size": k[4], "lr": v}
        for k, v in sorted(best.items())
    ]
    meta = {**r.meta, "chosen_lr": chosen}
    return Results([row for row in r.rows if keep(row)], r.config, meta, r.checks)
