"""Rendering a finished study: ``report.md``, a self-contained ``report.html``, the plots.

The report is assembled once as a list of blocks (:mod:`bnkit.study.results.markup`) and written
twice. Rendering reads only the :class:`~bnkit.study.results.results.Results`; it never runs
anything.
"""

from __future__ import annotations

from pathlib import Path

from bnkit.study.atomic import atomic_file, atomic_write
from bnkit.study.protocols.finetune import FINETUNE
from bnkit.study.protocols.test_time import TEST_TIME
from bnkit.study.results.advice import advice
from bnkit.study.results.markup import Block, to_html, to_markdown
from bnkit.study.results.plots import FIGURES
from bnkit.study.results.results import Results
from bnkit.study.results.tables import (
    calibration_table,
    finetune_table,
    headline_table,
    model_table,
    stream_table,
)

__all__ = ["blocks", "checks_table", "render"]


def checks_table(r: Results) -> list[dict[str, str]]:
    """The directional checks as table rows."""
    return [
        {
            "check": c["claim"],
            "result": c["status"],
            "measured": c["measured"],
            "rule": c["rule"],
            f"at {100 * (1 - (1 - r.level) / max(1, c.get('rules_run', 1))):.2f}%": c.get(
                "bonferroni", "–"
            ),
            "source": c["source"],
        }
        for c in r.checks
    ]


def _setup(r: Results) -> str:
    c, m = r.config, r.meta
    sizes = "; ".join(
        f"{name}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in parts.items())
        for name, parts in m.get("sizes", {}).items()
    )
    tt, ft = c["test_time"], c["finetune"]
    labels = f" Labels mapped to outputs: {m['labels']}." if m.get("labels") else ""
    held = "; ".join(
        f"{row['source data']} {row['model']} {row['held-out source accuracy']}%"
        for row in model_table(r)
    )
    labels += f" Source models on held-out source images: {held}." if held else ""
    norm = m.get("normalization")
    if norm:
        labels += f" Images normalized by mean {norm['mean']} and std {norm['std']}."
    feed = m.get("feed") or {}
    on = [k.replace("_", " ") for k in ("mixed_precision", "channels_last") if feed.get(k)]
    labels += f" Computed with {' and '.join(on)}." if on else ""
    return (
        f"Data: {m.get('data')} ({sizes}). Model: {m.get('model')}.{labels} {c['seeds']} "
        f"seeds; every number is the mean over seeds ± the half-width of its "
        f"{100 * r.level:g}% confidence interval (Student's t); differences are paired by seed. "
        f"Test time: batch sizes {tt['batch_sizes']}, streams {tt['streams']} (Dirichlet α = "
        f"{tt['dirichlet_alpha']:g}), TENT lr {tt['tent_lr']:g}; stress arms on "
        f"{tt['stress_images']} images at lr {tt['stress_lr']:g}, reset every "
        f"{tt['reset_every']} batches. Fine-tuning: {ft['steps']} SGD steps (momentum 0.9, "
        f"{ft['warmup_steps']} warmup steps, cosine decay), learning rate chosen per strategy "
        f"from {ft['lrs']} on the target validation split; k = {ft['shots']}; batch sizes "
        f"{ft['batch_sizes']}. Device: {m.get('device')}, {m.get('workers')} worker(s) × "
        f"{m.get('threads_per_worker')} thread(s) ({m.get('executor', 'local')} executor); "
        f"{m.get('cells')} cells ({m.get('ran')} run "
        f"now, {m.get('skipped')} from an earlier run) in {m.get('wall_s', 0):.0f} s."
    )


def _checks_note(r: Results) -> str:
    ran = sum(c["status"] != "NOT RUN" for c in r.checks)
    held = sum(c["status"] == c.get("bonferroni") for c in r.checks if c["status"] == "PASS")
    passed = sum(c["status"] == "PASS" for c in r.checks)
    return (
        f"Each check is an expectation from the literature, stated before the run with its rule "
        f"and measured on paired seeds; UNDECIDED means the interval contains the margin (no "
        f"detectable difference at this size), NOT RUN that the rows are missing or there is "
        f"no interval. {ran} rules ran, so about {(1 - r.level) * ran:.1f} verdicts could come out "
        f"wrong by chance at {100 * r.level:g}% each; the column with the Bonferroni level "
        f"repeats every verdict at that stricter level ({held} of {passed} PASS hold there)."
    )


def blocks(r: Results, figures: dict[str, bytes]) -> list[Block]:
    """The report's content, in order."""
    out: list[Block] = [("h1", "bnkit study: what should BatchNorm do under a domain shift?")]
    out.append(("p", _setup(r)))
    out.append(("h2", "What to do"))
    out.extend(("li", text) for text in advice(r))
    out.append(("h2", "Directional checks"))
    out.append(("p", _checks_note(r)))
    out.append(("table", checks_table(r)))
    out.append(("h2", "Which targets inform the verdicts"))
    out.append(
        (
            "p",
            "The source model on each target against its held-out source accuracy; a "
            "target that does not hurt it, or where it is at chance, is left out.",
        )
    )
    out.append(("table", calibration_table(r)))
    out.append(("h2", "Test-time adaptation: strategy × target"))
    out.append(
        (
            "p",
            "First row: accuracy (%) of the source statistics; other rows: Δ in points "
            "against it, paired by seed (highest severity, i.i.d. stream).",
        )
    )
    out.append(("table", headline_table(r)))
    out.append(("h2", "Test streams"))
    out.append(("p", "Δ against the source statistics (points) per stream order, batches > 1."))
    out.append(("table", stream_table(r)))
    out.append(("h2", "Few-shot fine-tuning"))
    out.append(
        (
            "p",
            "First row: accuracy (%) of plain fine-tuning (`pytorch`); other rows: Δ "
            "against it. Each strategy at its learning rate chosen on the validation split.",
        )
    )
    out.append(("table", finetune_table(r)))
    out.append(("h2", "Figures"))
    out.extend(("figure", (name, title)) for name, (title, _) in FIGURES.items() if name in figures)
    out.append(("h2", "Source models"))
    out.append(("table", model_table(r)))
    out.append(("h2", "Strategies"))
    rows = [
        {"protocol": "test time", "strategy": s.name, "what it does": s.summary}
        for s in TEST_TIME.values()
    ]
    rows += [
        {"protocol": "fine-tuning", "strategy": s.name, "what it does": s.summary}
        for s in FINETUNE.values()
    ]
    out.append(("table", rows))
    return out


def render(results: Results, out: str | Path) -> Path:
    """Write ``report.md``, ``report.html`` and ``plots/*.png`` into ``out``.

    Returns:
        The path of ``report.html``.
    """
    out = Path(out)
    figures: dict[str, bytes] = {}
    for name, (_, draw) in FIGURES.items():
        png = draw(results)
        if png is not None:
            figures[name] = png
            path = out / "plots" / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(path, "wb") as f:
                f.write(png)
    content = blocks(results, figures)
    atomic_write(out / "report.md", to_markdown(content))
    atomic_write(out / "report.html", to_html(content, figures))
    return out / "report.html"
