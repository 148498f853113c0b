"""The plain-language "what to do" summary, worked out from the measured numbers.

Each sentence is computed from the results (which strategy ranked first, from which batch size a
statistic beat another, how much a stream order cost), so it says what *this* study found; a
sentence whose rows are missing from the grid is left out.
"""

from __future__ import annotations

from typing import Any

from bnkit.study.results import Results
from bnkit.study.tables import test_time_arms

__all__ = ["advice"]


def _sweep(r: Results) -> dict[str, Any]:
    top = max(int(s) for s in r.config["severities"])
    return {"severity": lambda v: v in (0, top)}


def _shifted(r: Results) -> dict[str, Any]:
    return {"shift": lambda s: s != "none", **_sweep(r)}


def _no_labels(r: Results) -> list[str]:
    ranked = []
    for label, sel in test_time_arms(r):
        if sel.get("model") == "bn" and "stress" not in label:
            s = r.summary(**sel, **_shifted(r))
            if s.n:
                ranked.append((s.mean, label, s))
    if not ranked:
        return []
    ranked.sort(reverse=True)
    best = ranked[0]
    src = r.summary(protocol="test_time", model="bn", strategy="source", **_shifted(r))
    text = (
        f"**No target labels:** over the shifted targets, the best strategy was {best[1]} "
        f"({best[2].percent()}%), against {src.percent()}% with the source statistics"
    )
    if len(ranked) > 1:
        text += f"; next came {ranked[1][1]} ({ranked[1][2].percent()}%)"
    return [text + "."]


def _batch_size(r: Results) -> list[str]:
    sizes = sorted(int(b) for b in r.config["test_time"]["batch_sizes"])
    base = {"protocol": "test_time", "model": "bn", "stream": "iid", **_sweep(r)}
    src = r.summary(**base, strategy="source")
    if not sizes or not src.n or not r.select(**base, strategy="test_batch"):
        return []
    tb = {b: r.summary(**base, strategy="test_batch", batch_size=b) for b in sizes}
    first = next((b for b in sizes if tb[b].n and tb[b].mean >= src.mean), None)
    when = (
        f"only from batch size {first} on"
        if first is not None
        else f"at none of the batch sizes tried (up to {sizes[-1]})"
    )
    text = (
        f"**Normalizing with test-batch statistics** matched or beat the source statistics "
        f"(averaged over all targets) {when}; at batch size {sizes[0]} it scored "
        f"{tb[sizes[0]].percent()}% against {src.percent()}%."
    )
    for name, label in (
        ("prior", "prior mixing"),
        ("adapt", "running statistics following the stream (adapt)"),
    ):
        s = r.summary(**base, strategy=name, batch_size=sizes[0])
        if s.n:
            text += f" At batch size {sizes[0]}, {label} scored {s.percent()}%."
    return [text]


def _streams(r: Results) -> list[str]:
    out = []
    sel = {"protocol": "test_time", "model": "bn", "batch_size": lambda b: b > 1, **_sweep(r)}
    for name in ("test_batch", "tent", "prior", "adapt"):
        d = r.paired(
            {**sel, "strategy": name, "stream": "sorted"},
            {**sel, "strategy": name, "stream": "iid"},
        )
        if d.n:
            out.append(f"{name} {d.percent()}")
    if not out:
        return []
    return [
        "**Label-sorted streams** (one class after another) changed accuracy by "
        + ", ".join(out)
        + " points against i.i.d. streams: with sorted or class-imbalanced test data, avoid "
        "statistics of the current batch."
    ]


def _families(r: Results) -> list[str]:
    n = r.meta.get("pool_size")
    out = []
    for fam in ("photometric", "noise", "blur", "spatial"):
        a = {"protocol": "test_time", "model": "bn", "family": fam, **_sweep(r)}
        d = r.paired({**a, "strategy": "adabn", "n": n}, {**a, "strategy": "source"})
        if d.n:
            out.append(f"{fam} {d.percent()}")
    if not out:
        return []
    text = (
        "**By kind of shift**, recomputing the statistics on the target (AdaBN) changed accuracy "
        "by " + ", ".join(out) + " points. Statistics fix shifts of pixel statistics; they cannot "
        "undo a geometric change (rotation), which needs labels."
    )
    inv = {"protocol": "test_time", "model": "bn", "shift": "inversion"}
    d = r.paired({**inv, "strategy": "adabn", "n": n}, {**inv, "strategy": "source"})
    if d.n and d.mean < 0.05:
        text += (
            f" Inversion is the exception among photometric shifts (AdaBN {d.percent()} points): "
            "renormalizing rescales each channel by a positive factor and cannot flip a sign."
        )
    return [text]


def _finetune(r: Results) -> list[str]:
    ft = r.config["finetune"]
    out = []
    for lr in ft["lrs"]:
        parts = []
        for bs in sorted(ft["batch_sizes"]):
            ranked = []
            for name in ft["strategies"]:
                s = r.summary(protocol="finetune", model="bn", strategy=name, lr=lr, batch_size=bs)
                if s.n:
                    ranked.append((s.mean, name, s))
            if ranked:
                ranked.sort(reverse=True)
                best = f"{ranked[0][1]} at batch {bs} ({ranked[0][2].percent()}%"
                if ranked[0][1] != "pytorch":
                    pt = r.summary(
                        protocol="finetune", model="bn", strategy="pytorch", lr=lr, batch_size=bs
                    )
                    best += f"; plain PyTorch {pt.percent()}%"
                parts.append(best + ")")
        if parts:
            out.append(f"with lr {lr:g}, " + ", ".join(parts))
    if not out:
        return []
    text = (
        f"**Few-shot fine-tuning** ({ft['steps']} SGD steps, mean over shifts and k): the best "
        "BatchNorm strategy was " + "; ".join(out) + "."
    )
    lrs = sorted(ft["lrs"])
    if len(lrs) > 1:
        moves = []
        for name in ("pytorch", "frozen_stats", "frozen"):
            base = {"protocol": "finetune", "model": "bn", "strategy": name}
            d = r.paired({**base, "lr": lrs[-1]}, {**base, "lr": lrs[0]})
            if d.n:
                moves.append(f"{name} {d.percent()}")
        if moves:
            text += (
                f" Raising the learning rate from {lrs[0]:g} to {lrs[-1]:g} changed "
                + ", ".join(moves)
                + " points: the learning rate that suits one BatchNorm strategy does not suit "
                "another, so choose it for the strategy you use."
            )
    bad = [row for row in r.select(protocol="finetune") if row["nonfinite"]]
    if bad:
        counts: dict[str, int] = {}
        for row in bad:
            counts[row["strategy"]] = counts.get(row["strategy"], 0) + 1
        lrs_bad = sorted({float(row["lr"]) for row in bad})
        text += (
            f" Training diverged (NaN/Inf outputs, scored as wrong) in {len(bad)} of "
            f"{len(r.select(protocol='finetune'))} fine-tuning cells: "
            + ", ".join(f"{k} {v}" for k, v in counts.items())
            + f" (lr {', '.join(f'{x:g}' for x in lrs_bad)})."
        )
    return [text]


def advice(r: Results) -> list[str]:
    """The summary, as a list of Markdown paragraphs."""
    return [*_no_labels(r), *_batch_size(r), *_streams(r), *_families(r), *_finetune(r)]
