"""Terminal rendering: a rich table on a terminal when rich is installed, plain text elsewhere."""

from __future__ import annotations

import sys

__all__ = ["plain_table", "print_table"]


def print_table(title: str, rows: list[dict[str, str]]) -> None:
    """Print ``rows`` (dicts with the same keys) as a table."""
    if not rows:
        print(f"{title}: (none)")
        return
    if not (sys.stdout.isatty() and _print_rich(title, rows)):
        print(title)
        print(plain_table(rows))


def _print_rich(title: str, rows: list[dict[str, str]]) -> bool:
    """Print ``rows`` with rich; False when rich is not installed."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        return False
    table = Table(title=title)
    for key in rows[0]:
        table.add_column(key)
    for row in rows:
        table.add_row(*(row[k] for k in row))
    Console().print(table)
    return True


def plain_table(rows: list[dict[str, str]]) -> str:
    """A plain-text table of ``rows``."""
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    head = "  ".join(k.ljust(widths[k]) for k in keys)
    rule = "  ".join("-" * widths[k] for k in keys)
    body = ["  ".join(r[k].ljust(widths[k]) for k in keys).rstrip() for r in rows]
    return "\n".join([head, rule, *body])
