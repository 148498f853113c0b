"""The study's tables, as lists of string dicts (for the terminal, Markdown and HTML alike).

Every cell of a table is mean ± half-width of the 95% CI over seeds, in percent.
"""

from __future__ import annotations

from typing import Any

from bnkit.study.results import Results

__all__ = [
    "finetune_shift_table",
    "finetune_table",
    "headline_table",
    "model_table",
    "test_time_arms",
]


def _sweep(r: Results) -> int:
    return max(int(s) for s in r.config["severities"])


def test_time_arms(r: Results) -> list[tuple[str, dict[str, Any]]]:
    """The rows of the headline table: a label and the selection of rows it averages."""
    tt = r.config["test_time"]
    big = max(tt["batch_sizes"]) if tt["batch_sizes"] else 0
    tent_bs = tt["tent_batch_size"]
    arms: list[tuple[str, dict[str, Any]]] = [
        ("source", {"model": "bn", "strategy": "source"}),
        (
            f"adabn (n={r.meta.get('pool_size')}, all)",
            {"strategy": "adabn", "n": r.meta.get("pool_size")},
        ),
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
        (f"tent (batch {tent_bs})", {"strategy": "tent", "stream": "iid"}),
        ("tent_stress", {"strategy": "tent_stress"}),
        ("GroupNorm twin: source", {"model": "gn", "strategy": "source"}),
    ]
    return [(label, {"protocol": "test_time", "model": "bn", **sel}) for label, sel in arms]


def _targets(r: Results) -> list[tuple[str, int]]:
    """The (shift, severity) columns of the headline table: the unshifted one, then each shift
    at its highest severity."""
    sweep = _sweep(r)
    out: list[tuple[str, int]] = []
    for row in r.select(protocol="test_time"):
        pair = (row["shift"], int(row["severity"]))
        if (pair[1] in (0, sweep)) and pair not in out:
            out.append(pair)
    return out


def headline_table(r: Results) -> list[dict[str, str]]:
    """Test-time strategies × targets at the highest severity (i.i.d. stream), plus the mean
    accuracy and the mean expected calibration error over the shifted targets."""
    targets = _targets(r)
    table = []
    for label, sel in test_time_arms(r):
        if not r.select(**sel):
            continue
        row = {"strategy": label}
        for shift, sev in targets:
            row[shift] = r.summary(**sel, shift=shift, severity=sev).percent()
        shifted: dict[str, Any] = {
            "shift": lambda s: s != "none",
            "severity": lambda v: v in (0, _sweep(r)),
        }
        row["mean (shifted)"] = r.summary(**sel, **shifted).percent()
        row["ECE (shifted)"] = r.summary("ece", **sel, **shifted).percent()
        table.append(row)
    return table


def finetune_table(r: Results) -> list[dict[str, str]]:
    """Fine-tuning strategies × fine-tuning batch size, one column group per learning rate
    (mean over fine-tuning shifts and k)."""
    ft = r.config["finetune"]
    table = []
    arms = [("bn", s) for s in ft["strategies"]] + [("gn", "pytorch")]
    for model, strategy in arms:
        sel = {"protocol": "finetune", "model": model, "strategy": strategy}
        if not r.select(**sel):
            continue
        label = strategy if model == "bn" else "GroupNorm twin: fine-tune"
        row = {"strategy": label}
        for lr in ft["lrs"]:
            for bs in ft["batch_sizes"]:
                row[f"lr {lr:g}, batch {bs}"] = r.summary(**sel, lr=lr, batch_size=bs).percent()
        table.append(row)
    return table


def finetune_shift_table(r: Results) -> list[dict[str, str]]:
    """Fine-tuning strategies × fine-tuning shift (mean over k, batch sizes and lrs)."""
    ft = r.config["finetune"]
    shifts = r.values("shift", protocol="finetune")
    table = []
    for model, strategy in [("bn", s) for s in ft["strategies"]] + [("gn", "pytorch")]:
        sel = {"protocol": "finetune", "model": model, "strategy": strategy}
        if not r.select(**sel):
            continue
        row = {"strategy": strategy if model == "bn" else "GroupNorm twin: fine-tune"}
        for shift in shifts:
            row[shift] = r.summary(**sel, shift=shift).percent()
        table.append(row)
    return table


def model_table(r: Results) -> list[dict[str, str]]:
    """The source models: held-out source accuracy per model kind (over seeds)."""
    from bnkit.study.metrics import summarize

    kinds: dict[str, list[float]] = {}
    for m in r.meta.get("source_models", []):
        kinds.setdefault(m["model"], []).append(float(m["val_accuracy"]))
    names = {"bn": "BatchNorm network", "gn": "GroupNorm twin"}
    return [
        {
            "model": names.get(k, k),
            "held-out source accuracy": summarize(v).percent(),
            "seeds": str(len(v)),
        }
        for k, v in kinds.items()
    ]
