"""Rendering a finished study: ``report.md``, a self-contained ``report.html``, the plots.

The report is assembled once as a list of blocks (headings, paragraphs, tables, figures) and
written twice: as Markdown (figures as files under ``plots/``) and as HTML (figures embedded as
base64 PNG, so the one file can be mailed or archived). Rendering reads only the
:class:`~bnkit.study.results.Results`; it never runs anything.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from bnkit.study.advice import advice
from bnkit.study.plots import FIGURES
from bnkit.study.results import Results, atomic_write
from bnkit.study.strategies import FINETUNE, TEST_TIME
from bnkit.study.tables import finetune_shift_table, finetune_table, headline_table, model_table

__all__ = ["blocks", "checks_table", "render", "to_html", "to_markdown"]

Block = tuple[str, Any]


def checks_table(r: Results) -> list[dict[str, str]]:
    """The directional checks as table rows."""
    return [
        {
            "check": c["claim"],
            "result": c["status"],
            "measured": c["measured"],
            "source": c["source"],
        }
        for c in r.checks
    ]


def _setup(r: Results) -> str:
    c, m = r.config, r.meta
    sizes = m.get("sizes", {})
    parts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sizes.items())
    tt, ft = c["test_time"], c["finetune"]

    def listed(field: str, protocol: str, **where: Any) -> str:
        return ", ".join(str(v) for v in r.values(field, protocol=protocol, **where)) or "none"

    return (
        f"Data: {m.get('data')} ({parts}). Model: {m.get('model')}. {c['seeds']} seeds; every "
        f"number is the mean over seeds ± the half-width of its 95% confidence interval "
        f"(Student's t). Test-time protocol: targets {listed('shift', 'test_time')} at "
        f"severities {listed('severity', 'test_time')} (0: unshifted or the user's target); "
        f"test batch sizes {tt['batch_sizes']}; streams {tt['streams']}; AdaBN with n = "
        f"{listed('n', 'test_time', strategy='adabn')} target samples. Fine-tuning protocol: "
        f"shifts {listed('shift', 'finetune')} at severity {listed('severity', 'finetune')}; "
        f"k = {listed('k', 'finetune')} labels per class; batch sizes "
        f"{listed('batch_size', 'finetune')}; {ft['steps']} SGD steps (momentum 0.9) at lr "
        f"{listed('lr', 'finetune')}; ghost batches of {ft['ghost_size']} (at a batch of "
        f"{ft['ghost_size']} or fewer, ghost batch normalization is plain batch normalization). "
        "Device: "
        f"{m.get('device')}, {m.get('workers')} worker(s) × {m.get('threads_per_worker')} "
        f"thread(s); {m.get('cells')} cells ({m.get('ran')} run now, {m.get('skipped')} from an "
        f"earlier run) in {m.get('wall_s', 0):.0f} s."
    )


def blocks(r: Results, figures: dict[str, bytes]) -> list[Block]:
    """The report's content, in order."""
    out: list[Block] = [("h1", "bnkit study: what should BatchNorm do under a domain shift?")]
    out.append(("p", _setup(r)))
    out.append(("h2", "What to do"))
    out.extend(("li", text) for text in advice(r))
    out.append(("h2", "Directional checks"))
    out.append(
        (
            "p",
            "Each check is an expectation from the literature, measured here on paired seeds. "
            "A FAIL is a finding of this study, reported as measured.",
        )
    )
    out.append(("table", checks_table(r)))
    out.append(("h2", "Test-time adaptation: strategy × shift"))
    out.append(
        (
            "p",
            "Accuracy (%) on the target test set, highest severity, i.i.d. stream; `none` is "
            "the unshifted target.",
        )
    )
    out.append(("table", headline_table(r)))
    out.append(("h2", "Few-shot fine-tuning"))
    out.append(("p", "Accuracy (%) after fine-tuning, mean over the fine-tuning shifts and k."))
    out.append(("table", finetune_table(r)))
    out.append(("p", "Per shift (mean over k, batch sizes and learning rates):"))
    out.append(("table", finetune_shift_table(r)))
    out.append(("h2", "Figures"))
    for name, (title, _) in FIGURES.items():
        if name in figures:
            out.append(("figure", (name, title)))
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


def _md_table(rows: list[dict[str, str]]) -> str:
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += [
        "| " + " | ".join(str(row[k]).replace("|", "\\|") for k in keys) + " |" for row in rows
    ]
    return "\n".join(lines)


def to_markdown(content: list[Block]) -> str:
    parts = []
    for kind, value in content:
        if kind == "h1":
            parts.append(f"# {value}")
        elif kind == "h2":
            parts.append(f"## {value}")
        elif kind == "p":
            parts.append(value)
        elif kind == "li":
            parts.append(f"* {value}")
        elif kind == "table":
            parts.append(_md_table(value))
        elif kind == "figure":
            name, title = value
            parts.append(f"![{title}](plots/{name}.png)")
    return "\n\n".join(parts) + "\n"


def _inline(text: str) -> str:
    """Escape, then turn Markdown **bold** and `code` into HTML."""
    out = html.escape(text)
    pieces = out.split("**")
    out = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(pieces))
    pieces = out.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(pieces))


def to_html(content: list[Block], figures: dict[str, bytes]) -> str:
    body = []
    for kind, value in content:
        if kind in ("h1", "h2"):
            body.append(f"<{kind}>{html.escape(value)}</{kind}>")
        elif kind == "p":
            body.append(f"<p>{_inline(value)}</p>")
        elif kind == "li":
            body.append(f"<ul><li>{_inline(value)}</li></ul>")
        elif kind == "table" and value:
            head = "".join(f"<th>{html.escape(k)}</th>" for k in value[0])
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row.values()) + "</tr>"
                for row in value
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif kind == "figure":
            name, title = value
            data = base64.b64encode(figures[name]).decode("ascii")
            body.append(
                f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{html.escape(title)}</figcaption></figure>"
            )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
        "color:#222}table{border-collapse:collapse;margin:1em 0;font-size:13px}"
        "th,td{border:1px solid #ccc;padding:3px 7px;text-align:left}th{background:#f3f3f3}"
        "img{max-width:100%}figure{margin:1.5em 0}ul{margin:.3em 0}"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>bnkit study</title><style>{style}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


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
            path.write_bytes(png)
    content = blocks(results, figures)
    atomic_write(out / "report.md", to_markdown(content))
    atomic_write(out / "report.html", to_html(content, figures))
    return out / "report.html"
