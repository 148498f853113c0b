"""The study's tables, as lists of string dicts (for the terminal, Markdown and HTML alike).

A baseline row holds accuracies (mean ± CI over seeds, in percent); every other row holds its
paired difference from that named baseline (Δ in points, mean ± CI over seeds, paired by seed).
"""

from __future__ import annotations

from typing import Any

from bnkit.study.results.results import Results
from bnkit.study.results.selection import calibration, informative_shifts, sweep, tuned
from bnkit.study.results.stats import summarize

__all__ = [
    "calibration_table",
    "finetune_table",
    "headline_table",
    "model_table",
    "stream_table",
    "test_time_arms",
]


def test_time_arms(r: Results) -> list[tuple[str, dict[str, Any]]]:
    """The rows of the headline table: a label and the selection of rows it averages."""
    tt = r.config["test_time"]
    big = max(tt["batch_sizes"]) if tt["batch_sizes"] else 0
    arms: list[tuple[str, dict[str, Any]]] = [
        ("source (baseline)", {"strategy": "source"}),
        ("adabn (whole pool)", {"strategy": "adabn", "n": 0}),
        ("adabn (16 images)", {"strategy": "adabn", "n": 16}),
        (
            f"test_batch (batch {big})",
            {"strategy": "test_batch", "batch_size": big, "stream": "iid"},
        ),
        (
            f"prior N={tt['prior_strength']:g} (batch {big})",
            {"strategy": "prior", "batch_size": big, "stream": "iid"},
        ),
        (
            f"adapt m={tt['adapt_momentum']:g} (batch {big})",
            {"strategy": "adapt", "batch_size": big, "stream": "iid"},
        ),
        (f"tent (batch {tt['tent_batch_size']})", {"strategy": "tent", "stream": "iid"}),
        ("tent_long (last pass)", {"strategy": "tent_long"}),
        ("tent_reset (last pass)", {"strategy": "tent_reset"}),
        ("GroupNorm twin", {"model": "gn", "strategy": "source"}),
    ]
    return [(label, {"protocol": "test_time", "model": "bn", **sel}) for label, sel in arms]


def _targets(r: Results) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for row in r.select(protocol="test_time", **sweep(r)):
        pair = (row["shift"], int(row["severity"]))
        if pair not in out:
            out.append(pair)
    return out


def headline_table(r: Results) -> list[dict[str, str]]:
    """Test-time strategies × sweep targets (i.i.d. stream): the source row in accuracy, the
    others as Δ against it; the last column averages the informative targets."""
    good = informative_shifts(r)
    table = []
    base_sel = test_time_arms(r)[0][1]
    for i, (label, sel) in enumerate(test_time_arms(r)):
        if not r.select(**sel):
            continue
        row = {"strategy": label}
        for shift, sev in _targets(r):
            where: dict[str, Any] = {"shift": shift, "severity": sev}
            s = (
                r.summary(**sel, **where)
                if i == 0
                else r.paired({**sel, **where}, {**base_sel, **where})
            )
            row[shift] = s.percent() if i == 0 else s.signed()
        on = {"shift": lambda s: s in good, **sweep(r)}
        mean = r.summary(**sel, **on) if i == 0 else r.paired({**sel, **on}, {**base_sel, **on})
        row["informative shifts"] = mean.percent() if i == 0 else mean.signed()
        table.append(row)
    return table


def stream_table(r: Results) -> list[dict[str, str]]:
    """Δ against the source statistics per stream (batches > 1; informative and unshifted)."""
    keep = informative_shifts(r) | {"none"}
    on = {"shift": lambda s: s in keep, **sweep(r)}
    base = {"protocol": "test_time", "model": "bn", "strategy": "source", **on}
    table = []
    for name in ("test_batch", "prior", "adapt", "tent"):
        row = {"strategy": name}
        for stream in r.config["test_time"]["streams"]:
            sel = {**base, "strategy": name, "stream": stream, "batch_size": lambda b: b > 1}
            row[stream] = r.paired(sel, base).signed()
        if any(v != "–" for k, v in row.items() if k != "strategy"):
            table.append(row)
    return table


def calibration_table(r: Results) -> list[dict[str, str]]:
    """Every target: the source model's accuracy, its drop, and whether it informs verdicts."""
    return [
        {
            "target": t.shift if t.severity == 0 else f"{t.shift} {t.severity}",
            "family": t.family,
            "source accuracy": t.source.percent(),
            "Δ vs held-out source": t.drop.signed(),
            "used in verdicts": {"informative": "yes", "reference": "reference"}.get(
                t.status, f"no ({t.status})"
            ),
        }
        for t in calibration(r)
    ]


def finetune_table(r: Results) -> list[dict[str, str]]:
    """Fine-tuning, each strategy at its chosen learning rate: ``pytorch`` in accuracy, the
    others as Δ against it, per scenario and batch size."""
    t = tuned(r)
    ft = r.config["finetune"]
    good = informative_shifts(r) - {"none"}
    scenarios: list[tuple[str, Any]] = [("no shift", "none"), ("shifted", lambda s: s in good)]
    arms = [("bn", s) for s in ft["strategies"]] + [("gn", "pytorch")]
    table = []
    for model, strategy in arms:
        label = strategy if model == "bn" else "GroupNorm twin"
        row = {
            "strategy": label + (" (baseline)" if (model, strategy) == ("bn", "pytorch") else "")
        }
        for name, shift in scenarios:
            for bs in sorted(ft["batch_sizes"]):
                base = {
                    "protocol": "finetune",
                    "model": "bn",
                    "strategy": "pytorch",
                    "batch_size": bs,
                    "shift": shift,
                }
                sel = {**base, "model": model, "strategy": strategy}
                if (model, strategy) == ("bn", "pytorch"):
                    row[f"{name}, batch {bs}"] = t.summary(**sel).percent()
                else:
                    row[f"{name}, batch {bs}"] = t.paired(sel, base).signed()
        lrs = sorted(
            {
                c["lr"]
                for c in t.meta["chosen_lr"]
                if c["strategy"] == strategy and c["model"] == model
            }
        )
        row["chosen lr"] = ", ".join(f"{lr:g}" for lr in lrs) or "–"
        if t.select(protocol="finetune", model=model, strategy=strategy):
            table.append(row)
    return table


def model_table(r: Results) -> list[dict[str, str]]:
    """The source models: held-out source accuracy and training steps, per data set and kind."""
    kinds: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for m in r.meta.get("source_models", []):
        kinds.setdefault((m.get("source", "?"), m["model"]), []).append(m)
    names = {"bn": "BatchNorm network", "gn": "GroupNorm twin"}
    return [
        {
            "source data": src,
            "model": names.get(kind, kind),
            "held-out source accuracy": summarize(
                [float(m["val_accuracy"]) for m in ms], r.level
            ).percent(),
            "steps (best)": ", ".join(str(m.get("steps", "?")) for m in ms),
            "converged": f"{sum(bool(m.get('converged')) for m in ms)} of {len(ms)}",
        }
        for (src, kind), ms in sorted(kinds.items())
    ]
