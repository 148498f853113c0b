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
    "bnkit.study.api",
    "bnkit.study.atomic",
    "bnkit.study.deps",
    "bnkit.study.config",
    "bnkit.study.config.names",
    "bnkit.study.config.parse",
    "bnkit.study.config.settings",
    "bnkit.study.config.validate",
    "bnkit.study.data",
    "bnkit.study.data.domain",
    "bnkit.study.data.scenarios",
    "bnkit.study.data.shifts",
    "bnkit.study.data.sources",
    "bnkit.study.data.streams",
    "bnkit.study.data.user",
    "bnkit.study.models",
    "bnkit.study.models.resnet",
    "bnkit.study.models.scores",
    "bnkit.study.models.source",
    "bnkit.study.models.training",
    "bnkit.study.models.user",
    "bnkit.study.protocols",
    "bnkit.study.protocols.bn_only",
    "bnkit.study.protocols.finetune",
    "bnkit.study.protocols.test_time",
    "bnkit.study.execution",
    "bnkit.study.execution.bench",
    "bnkit.study.execution.benches",
    "bnkit.study.execution.cells",
    "bnkit.study.execution.compute",
    "bnkit.study.execution.grid",
    "bnkit.study.execution.identity",
    "bnkit.study.execution.local",
    "bnkit.study.execution.runner",
    "bnkit.study.execution.store",
    "bnkit.study.execution.user_bench",
    "bnkit.study.results",
    "bnkit.study.results.advice",
    "bnkit.study.results.checks",
    "bnkit.study.results.markup",
    "bnkit.study.results.plots",
    "bnkit.study.results.report",
    "bnkit.study.results.results",
    "bnkit.study.results.rules",
    "bnkit.study.results.selection",
    "bnkit.study.results.stats",
    "bnkit.study.results.tables",
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
