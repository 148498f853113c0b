"""Small text helpers shared by the rules: layer lists and ``where=`` arguments for fixes."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["listing", "where"]


def listing(names: Sequence[str], limit: int = 6) -> str:
    """``'a', 'b' and 'c'`` (at most ``limit`` names, then a count)."""
    shown = [repr(n) for n in names[:limit]]
    if len(names) > limit:
        return ", ".join(shown) + f" and {len(names) - limit} more"
    if len(shown) <= 1:
        return "".join(shown)
    return ", ".join(shown[:-1]) + " and " + shown[-1]


def where(names: Sequence[str], every: Sequence[str]) -> str:
    """The ``where=`` argument (with its leading comma) that selects exactly ``names``.

    Empty when ``names`` are all the BatchNorm layers of the model.
    """
    if set(names) == set(every):
        return ""
    if len(names) == 1:
        return f", where={names[0]!r}"
    if len(names) <= 3:
        return f", where=lambda name, _: name in {{{', '.join(repr(n) for n in names)}}}"
    return ", where=lambda name, _: name in set(finding.layers)"
