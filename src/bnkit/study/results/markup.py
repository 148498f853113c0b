"""Writing a report's blocks as Markdown and as self-contained HTML.

A block is ``(kind, value)``: ``"h1"``/``"h2"`` headings, ``"p"`` paragraphs, ``"li"`` list
items, ``"table"`` (a list of string dicts) and ``"figure"`` (name, title). Markdown links
figures as ``plots/<name>.png``; HTML embeds them as base64 PNG.
"""

from __future__ import annotations

import base64
import html
from typing import Any

__all__ = ["Block", "to_html", "to_markdown"]

Block = tuple[str, Any]


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
