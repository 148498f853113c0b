"""The public surface: __all__ lists exactly the public names, sorted, and they resolve."""

from __future__ import annotations

import importlib

import pytest

import bnkit

MODULES = [
    "bnkit",
    "bnkit.errors",
    "bnkit.policy",
    "bnkit.presets",
    "bnkit.functional",
    "bnkit.apply",
    "bnkit.reference",
    "bnkit.explain",
    "bnkit.distributed",
    "bnkit.tent",
    "bnkit.diagnostics",
    "bnkit.diagnostics.check",
    "bnkit.diagnostics.findings",
    "bnkit.diagnostics.report",
    "bnkit.diagnostics.watch",
    "bnkit.recalibrate",
    "bnkit.statsets",
    "bnkit.statbank",
    "bnkit.convert",
    "bnkit.convert.frozen",
    "bnkit.convert.fuse",
    "bnkit.convert.sync",
    "bnkit.study",
    "bnkit.study.advice",
    "bnkit.study.bench",
    "bnkit.study.cells",
    "bnkit.study.checks",
    "bnkit.study.config",
    "bnkit.study.data",
    "bnkit.study.execute",
    "bnkit.study.grid",
    "bnkit.study.metrics",
    "bnkit.study.models",
    "bnkit.study.plots",
    "bnkit.study.pretrain",
    "bnkit.study.report",
    "bnkit.study.results",
    "bnkit.study.runner",
    "bnkit.study.shifts",
    "bnkit.study.strategies",
    "bnkit.study.tables",
    "bnkit.study.training",
    "bnkit.study.user",
    "bnkit.study.user_data",
    "bnkit.study._deps",
]


def test_top_level_all_is_complete_and_sorted() -> None:
    public = sorted(
        (n for n in vars(bnkit) if not n.startswith("_") or n == "__version__"),
        key=str.casefold,
    )
    modules = {n for n in public if type(getattr(bnkit, n)).__name__ == "module"}
    assert len(bnkit.__all__) == len(set(bnkit.__all__))
    assert set(bnkit.__all__) == set(public) - modules


@pytest.mark.parametrize("name", MODULES)
def test_every_module_all_resolves(name: str) -> None:
    module = importlib.import_module(name)
    for item in module.__all__:
        assert hasattr(module, item), f"{name}.{item}"
