"""The rule table and Finding values."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.nn as nn

import bnkit
from bnkit.diagnostics import findings, rules
from bnkit.diagnostics._text import listing, where


def test_rule_table() -> None:
    table = rules.rules()
    assert [r.kind for r in table] == rules.kinds() == bnkit.diagnostics.kinds()
    assert len(set(rules.kinds())) == len(table)
    assert {r.needs for r in table} == set(rules.NEEDS)
    assert all(r.summary and callable(r.run) for r in table)
    # each rule is a plain function of a _rules_* module, which the table names
    assert all(r.run.__module__.startswith("bnkit.diagnostics._rules_") for r in table)


def test_findings_imports_no_rule_module() -> None:
    """Regression: findings.rules() imported the rule modules, which import findings."""
    source = Path(findings.__file__).read_text()
    assert "_rules_" not in source.replace("``_rules_*``", "")
    assert "bnkit.diagnostics.rules" not in source.split('"""', 2)[2]


def test_a_new_rule_is_one_function_and_one_row(monkeypatch: pytest.MonkeyPatch) -> None:
    def odd(ctx: findings.Context) -> list[bnkit.diagnostics.Finding]:
        names = tuple(f.name for f in ctx.layers if getattr(f.layer, "num_features", 0) % 2)
        if not names:
            return []
        return [
            bnkit.diagnostics.Finding(
                "odd_width", bnkit.diagnostics.Severity.INFO, names, "odd", "why", "fix"
            )
        ]

    row = rules.Rule("odd_width", "model", "BatchNorm with an odd number of channels", odd)
    monkeypatch.setattr(rules, "RULES", (*rules.RULES, row))
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
