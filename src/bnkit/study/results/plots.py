"""The study's figures, drawn with matplotlib (Agg) and returned as PNG bytes.

Every point is a mean over seeds with its confidence interval as an error bar. A figure whose
rows are not in the results (a grid without that sweep) is skipped: its function returns None.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from bnkit.study.data.shifts import FAMILIES
from bnkit.study.results.results import Results
from bnkit.study.results.selection import tuned

__all__ = ["FIGURES"]

COLORS = {
    "source": "#444444",
    "adabn": "#1f77b4",
    "test_batch": "#d62728",
    "prior": "#2ca02c",
    "adapt": "#9467bd",
    "tent": "#ff7f0e",
    "tent_long": "#8c564b",
    "tent_reset": "#7f7f7f",
    "gn": "#17becf",
    "pytorch": "#d62728",
    "frozen_affine": "#e377c2",
    "frozen_stats": "#1f77b4",
    "frozen": "#444444",
    "bn_only": "#bcbd22",
    "adabn_finetune": "#2ca02c",
    "renorm": "#9467bd",
    "ghost": "#ff7f0e",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any, ax: Any, **legend: Any) -> bytes | None:
    """The figure as PNG bytes, with a legend; None when nothing was drawn on ``ax``."""
    if not ax.get_legend_handles_labels()[0]:
        _pyplot().close(fig)
        return None
    ax.legend(fontsize=8, **legend)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _line(ax: Any, r: Results, xs: list[Any], sels: list[dict[str, Any]], **style: Any) -> None:
    """A line through the summaries of ``sels`` (one selection per x), with CI bars."""
    pts = [(x, r.summary(**sel)) for x, sel in zip(xs, sels, strict=True)]
    pts = [(x, s) for x, s in pts if s.n]
    if pts:
        ax.errorbar(
            [x for x, _ in pts],
            [100 * s.mean for _, s in pts],
            yerr=[100 * (s.ci if s.ci == s.ci else 0.0) for _, s in pts],
            capsize=3,
            marker="o",
            markersize=4,
            **style,
        )


def _sweep(r: Results) -> int:
    return max(int(s) for s in r.config["severities"])


def _at_sweep(r: Results) -> dict[str, Any]:
    sweep = _sweep(r)
    return {"severity": lambda v: v in (0, sweep)}


def batch_size_figure(r: Results) -> bytes | None:
    """Accuracy vs test batch size (all targets at the highest severity, and unshifted)."""
    sizes = sorted(int(b) for b in r.config["test_time"]["batch_sizes"])
    if not sizes or not r.select(protocol="test_time", strategy="test_batch"):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    base = {"protocol": "test_time", "model": "bn", **_at_sweep(r)}
    for name in ("test_batch", "prior", "adapt"):
        for stream, dash in (("iid", "-"), ("sorted", "--"), ("dirichlet", "-.")):
            sels = [
                {
                    **base,
                    "strategy": name,
                    "batch_size": b,
                    "stream": "iid" if b == 1 and name != "adapt" else stream,
                }
                for b in sizes
            ]
            _line(
                ax,
                r,
                sizes,
                sels,
                color=COLORS[name],
                linestyle=dash,
                label=f"{name} ({stream})",
            )
    for name, sel in (
        ("source", {"strategy": "source"}),
        ("adabn", {"strategy": "adabn", "n": 0}),
    ):
        s = r.summary(**base, **sel)
        if s.n:
            ax.axhline(100 * s.mean, color=COLORS[name], linestyle=":", label=f"{name} (any batch)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.set_xlabel("test batch size")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Test-time statistics vs batch size (mean over targets)")
    ax.grid(alpha=0.3)
    return _png(fig, ax, loc="upper left", bbox_to_anchor=(1.02, 1.0))


def samples_figure(r: Results) -> bytes | None:
    """AdaBN accuracy vs number of target samples, per shift family (last point: all)."""
    ns = sorted(int(n) for n in r.values("n", protocol="test_time", strategy="adabn"))
    ns = [n for n in ns if n] + ([0] if 0 in ns else [])
    if len(ns) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    families = [f for f in ("none", *FAMILIES, "user") if r.select(protocol="test_time", family=f)]
    cmap = plt.get_cmap("tab10")
    xs = list(range(len(ns)))
    for i, fam in enumerate(families):
        base = {"protocol": "test_time", "model": "bn", "family": fam, **_at_sweep(r)}
        _line(
            ax,
            r,
            xs,
            [{**base, "strategy": "adabn", "n": n} for n in ns],
            color=cmap(i),
            label=f"adabn, {fam}",
        )
        s = r.summary(**base, strategy="source")
        if s.n:
            ax.axhline(100 * s.mean, color=cmap(i), linestyle=":", linewidth=1)
    ax.set_xticks(xs, [str(n) if n else "all" for n in ns])
    ax.set_xlabel("target samples used for the statistics (n)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("AdaBN vs number of target samples (dotted: source statistics)")
    ax.grid(alpha=0.3)
    return _png(fig, ax, loc="upper left", bbox_to_anchor=(1.02, 1.0))


def finetune_figure(r: Results) -> bytes | None:
    """Learning curves: validation accuracy along fine-tuning, each strategy at its chosen
    learning rate (one panel per scenario: without a shift, shifted), smallest batch size."""
    t = tuned(r)
    if not t.select(protocol="finetune"):
        return None
    ft = r.config["finetune"]
    bs = min(ft["batch_sizes"])
    plt = _pyplot()
    panels = [("no shift", lambda s: s == "none"), ("shifted", lambda s: s != "none")]
    fig, axes = plt.subplots(1, 2, figsize=(10.4, 4.2), sharey=True, squeeze=False)
    for ax, (title, shift) in zip(axes[0], panels, strict=True):
        for model, name in [("bn", s) for s in ft["strategies"]] + [("gn", "pytorch")]:
            rows = t.select(
                protocol="finetune", model=model, strategy=name, batch_size=bs, shift=shift
            )
            curves = [row["curve"] for row in rows if row.get("curve")]
            if not curves:
                continue
            width = min(len(c) for c in curves)
            steps = [round(i * ft["steps"] / (width - 1)) for i in range(width)]
            mean = [100 * sum(c[i] for c in curves) / len(curves) for i in range(width)]
            ax.plot(
                steps,
                mean,
                marker="o",
                markersize=3,
                color=COLORS["gn" if model == "gn" else name],
                linestyle="--" if model == "gn" else "-",
                label=name if model == "bn" else "GroupNorm twin",
            )
        ax.set_xlabel("fine-tuning step")
        ax.set_title(f"{title}, batch {bs}")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("target validation accuracy (%)")
    fig.suptitle("Learning curves (mean over seeds, targets and k; chosen learning rates)")
    return _png(fig, axes[0][-1], loc="upper left", bbox_to_anchor=(1.02, 1.0))


def severity_figure(r: Results) -> bytes | None:
    """Accuracy vs severity for the main test-time strategies (shifts with 5 levels)."""
    sevs = sorted(int(s) for s in r.config["severities"])
    if len(sevs) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    big = max(r.config["test_time"]["batch_sizes"])
    multi: dict[str, Any] = {
        "shift": lambda s: s not in ("none", "inversion"),
        "protocol": "test_time",
        "stream": "iid",
    }
    arms: list[tuple[str, dict[str, Any]]] = [
        ("source", {"model": "bn", "strategy": "source"}),
        ("adabn", {"model": "bn", "strategy": "adabn", "n": 0}),
        ("test_batch", {"model": "bn", "strategy": "test_batch", "batch_size": big}),
        ("gn", {"model": "gn", "strategy": "source"}),
    ]
    for name, sel in arms:
        label = "GroupNorm twin" if name == "gn" else name
        _line(
            ax,
            r,
            sevs,
            [{**multi, **sel, "severity": v} for v in sevs],
            color=COLORS[name],
            label=label,
            linestyle="-",
        )
    ax.set_xticks(sevs)
    ax.set_xlabel("severity")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy vs severity (mean over shifts with 5 levels)")
    ax.grid(alpha=0.3)
    return _png(fig, ax, loc="upper left", bbox_to_anchor=(1.02, 1.0))


def groupnorm_figure(r: Results) -> bytes | None:
    """The GroupNorm control per shift family: BN source / adapted vs the GroupNorm twin."""
    if not r.select(protocol="test_time", model="gn"):
        return None
    plt = _pyplot()
    fams = [f for f in ("none", *FAMILIES) if r.select(protocol="test_time", family=f)]
    arms: list[tuple[str, dict[str, Any], str]] = [
        ("BN, source statistics", {"model": "bn", "strategy": "source"}, COLORS["source"]),
        (
            "BN, adabn",
            {"model": "bn", "strategy": "adabn", "n": 0},
            COLORS["adabn"],
        ),
        ("BN, tent", {"model": "bn", "strategy": "tent", "stream": "iid"}, COLORS["tent"]),
        ("GroupNorm twin", {"model": "gn", "strategy": "source"}, COLORS["gn"]),
    ]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    width = 0.8 / len(arms)
    for i, (label, sel, color) in enumerate(arms):
        sums = [r.summary(protocol="test_time", family=f, **_at_sweep(r), **sel) for f in fams]
        xs = [j + (i - (len(arms) - 1) / 2) * width for j in range(len(fams))]
        ax.bar(
            xs,
            [100 * s.mean if s.n else 0 for s in sums],
            width,
            yerr=[100 * s.ci if s.ci == s.ci else 0 for s in sums],
            capsize=2,
            color=color,
            label=label,
        )
    ax.set_xticks(range(len(fams)), ["unshifted" if f == "none" else f for f in fams])
    ax.set_ylabel("accuracy (%)")
    ax.set_title("The GroupNorm control, per shift family (highest severity)")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3, axis="y")
    return _png(fig, ax, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(arms))


FIGURES: dict[str, tuple[str, Callable[[Results], bytes | None]]] = {
    "batch_size": ("Accuracy vs test batch size", batch_size_figure),
    "samples": ("AdaBN accuracy vs number of target samples", samples_figure),
    "finetune": ("Learning curves of fine-tuning", finetune_figure),
    "severity": ("Accuracy vs severity", severity_figure),
    "groupnorm": ("The GroupNorm control", groupnorm_figure),
}
"""Figure name → (title, function)."""
