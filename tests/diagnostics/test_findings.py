"""The rule table and Finding values."""

from __future__ import annotations

import json

import pytest
import torch.nn as nn

import bnkit
from bnkit.diagnostics import findings
from bnkit.diagnostics._text import listing, where


def test_rule_table() -> None:
    table = findings.rules()
    assert [r.kind for r in table] == findings.kinds()
    assert {r.needs for r in table} == {"model", "input", "optimizer"}
    assert all(r.summary for r in table)
    with pytest.raises(bnkit.errors.DiagnosticError, match="already registered"):
        findings.rule("tiny_batch", "input", "again")(lambda ctx: [])
    with pytest.raises(bnkit.errors.DiagnosticError, match="needs must be"):
        findings.rule("new_kind", "weather", "no")


def test_a_new_rule_is_one_function(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(findings, "_RULES", dict(findings._RULES))

    @findings.rule("odd_width", "model", "BatchNorm with an odd number of channels")
    def odd(ctx: findings.Context) -> list[bnkit.diagnostics.Finding]:
        names = tuple(f.name for f in ctx.layers if getattr(f.layer, "num_features", 0) % 2)
        if not names:
            return []
        return [
            bnkit.diagnostics.Finding(
                "odd_width", bnkit.diagnostics.Severity.INFO, names, "odd", "why", "fix"
            )
        ]

    model = nn.Sequential(nn.BatchNorm1d(3), nn.BatchNorm1d(4))
    assert [(f.kind, f.layers) for f in bnkit.check(model)] == [("odd_width", ("0",))]
    assert [f.kind for f in bnkit.check(model, ignore=["odd_width"])] == []


def test_finding_text_and_dict() -> None:
    f = bnkit.diagnostics.Finding(
        "stale_running_stats", bnkit.diagnostics.Severity.ERROR, tuple("abcdefgh"), "w", "y", "z"
    )
    text = str(f)
    assert text.splitlines()[0] == (
        "error [stale_running_stats] 'a', 'b', 'c', 'd', 'e', 'f', … (8 layers)"
    )
    assert "  what: w" in text and "  fix:  z" in text
    assert json.loads(json.dumps(f.to_dict()))["layers"] == list("abcdefgh")
    assert repr(bnkit.diagnostics.Severity.INFO) == "Severity.INFO"


def test_text_helpers() -> None:
    assert listing(["a"]) == "'a'" and listing(["a", "b"]) == "'a' and 'b'"
    assert listing(list("abcdefgh"), limit=2) == "'a', 'b' and 6 more"
    assert where(["a", "b"], ["a", "b"]) == ""
    assert where(["a"], ["a", "b"]) == ", where='a'"
    assert where(["a", "b"], ["a", "b", "c"]) == ", where=lambda name, _: name in {'a', 'b'}"
