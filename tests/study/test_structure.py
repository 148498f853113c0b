"""The study's layout: stages in order, data flowing one way, public API only, small files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "src" / "bnkit" / "study"
STAGES = ("config", "data", "models", "protocols", "execution", "results")
"""Stage folders in the order data flows; the package root (atomic, deps) comes first and the
entry points (api, __init__) last."""


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def rank(module: str) -> int:
    parts = module.split(".")
    if len(parts) > 2 and parts[2] in STAGES:
        return 1 + STAGES.index(parts[2])
    if module in ("bnkit.study", "bnkit.study.api"):
        return len(STAGES) + 1
    return 0  # bnkit.study.atomic, bnkit.study.deps


def imports(path: Path) -> list[str]:
    """Modules imported by ``path``, except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING"
        for n in ast.walk(node)
    }
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.append(node.module)
            out += [f"{node.module}.{a.name}" for a in node.names]
    return out


MODULES = modules()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_bnkit_module_is_imported(name: str) -> None:
    found = imports(MODULES[name])
    bad = [m for m in found if m.startswith("bnkit._") and not m.startswith("bnkit.__")]
    assert not bad, f"{name} imports {bad}; the study uses bnkit's public API only"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_flow_from_earlier_stages_only(name: str) -> None:
    later = [
        m for m in imports(MODULES[name]) if m in MODULES and m != name and rank(m) > rank(name)
    ]
    assert not later, f"{name} (stage {rank(name)}) imports later stages: {later}"


def test_no_import_cycles_between_study_modules() -> None:
    graph = {
        name: {m for m in imports(path) if m in MODULES and m != name}
        for name, path in MODULES.items()
    }
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if nxt not in state:
                visit(nxt, [*trail, nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_files_stay_small(name: str) -> None:
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= 300, f"{name} has {lines} lines"


def test_the_stage_order_is_what_the_package_docstring_shows() -> None:
    doc = (ROOT / "__init__.py").read_text(encoding="utf-8")
    positions = [doc.index(f"    {stage}/") for stage in STAGES]
    assert positions == sorted(positions)
