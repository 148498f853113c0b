"""Rendering: report.md, a self-contained report.html, the plots, the tables."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from bnkit.study import Results, render
from bnkit.study.results.plots import FIGURES
from bnkit.study.results.report import checks_table
from bnkit.study.results.tables import (
    calibration_table,
    finetune_table,
    headline_table,
    stream_table,
)


def test_render_writes_every_file(tiny_run: tuple[Results, Path], tmp_path: Path) -> None:
    results, _ = tiny_run
    html_path = render(results, tmp_path)
    assert html_path == tmp_path / "report.html"
    html = html_path.read_text(encoding="utf-8")
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    pngs = sorted(p.stem for p in (tmp_path / "plots").glob("*.png"))
    assert pngs and set(pngs) <= set(FIGURES)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == len(pngs)
    for data in images:
        assert base64.b64decode(data).startswith(b"\x89PNG")
    assert "<script" not in html and "http" not in html  # nothing to fetch
    for name in pngs:
        assert f"](plots/{name}.png)" in md
    for text in (
        "## What to do", "## Directional checks", "## Which targets inform the verdicts",
        "strategy × target", "## Test streams", "Source models", "rules ran",
    ):  # fmt: skip
        assert text in md
    assert "nan" not in md.lower().replace("nonfinite", "")
    assert not list(tmp_path.rglob("*.tmp"))


def test_tables_show_the_baseline_then_paired_differences(tiny_run: tuple[Results, Path]) -> None:
    results, _ = tiny_run
    head = headline_table(results)
    assert head[0]["strategy"] == "source (baseline)"
    assert list(head[0])[1:4] == ["none", "contrast", "rotation"]
    assert not head[0]["contrast"].startswith(("+", "-"))  # an accuracy
    assert all(v == "–" or v[0] in "+-" for r in head[1:] for k, v in r.items() if k != "strategy")
    ft = finetune_table(results)
    assert [r["strategy"] for r in ft] == ["pytorch (baseline)", "frozen_stats", "GroupNorm twin"]
    assert set(ft[0]) == {"strategy", "no shift, batch 2", "no shift, batch 8", "shifted, batch 2",
                          "shifted, batch 8", "chosen lr"}  # fmt: skip
    assert {r["strategy"] for r in stream_table(results)} <= {
        "test_batch",
        "prior",
        "adapt",
        "tent",
    }
    cal = calibration_table(results)
    assert cal[0]["target"] == "none" and cal[0]["used in verdicts"] == "reference"
    checks = checks_table(results)
    assert {c["result"] for c in checks} <= {"PASS", "FAIL", "UNDECIDED", "NOT RUN"}
    assert len(checks) == 16 and all(c["rule"].startswith("paired Δ") for c in checks)


def test_every_figure_has_its_legend(
    tiny_run: tuple[Results, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bnkit.study.results import plots

    results, _ = tiny_run
    legends = []
    original = plots._png

    def spy(fig: object, ax: object, **legend: object) -> bytes | None:
        out = original(fig, ax, **legend)
        legends.append(ax.get_legend() is not None and bool(ax.get_legend().get_texts()))  # type: ignore[attr-defined]
        return out

    monkeypatch.setattr(plots, "_png", spy)
    drawn = [draw(results) for _, draw in plots.FIGURES.values()]
    assert legends and all(legends)
    assert sum(png is not None for png in drawn) == len(legends)
