"""The public surface: a curated top level, every module's ``__all__`` resolves, moved names
warn, no import cycles, and importing bnkit changes nothing outside bnkit."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import pkgutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import bnkit
from bnkit._deprecated import MOVED

SRC = Path(bnkit.__file__).parent
DEPRECATED_MODULES = {
    "bnkit.presets": "preset",
    "bnkit.statsets": "StatSet",
    "bnkit.statbank": "StatBank",
}
LEGACY_MODULES = {"bnkit._managed", "bnkit._surgery", "bnkit._running"}  # old pickles only


def _modules() -> list[str]:
    found = ["bnkit"]
    for info in pkgutil.walk_packages([str(SRC)], prefix="bnkit."):
        if info.name not in DEPRECATED_MODULES and info.name != "bnkit.__main__":
            found.append(info.name)
    return sorted(found)


def test_top_level_is_curated_sorted_and_complete() -> None:
    public = {n for n in vars(bnkit) if not n.startswith("_") or n == "__version__"}
    modules = {n for n in public if type(getattr(bnkit, n)).__name__ == "module"}
    assert bnkit.__all__ == sorted(bnkit.__all__, key=lambda n: (n[0].islower(), n))
    assert len(bnkit.__all__) == len(set(bnkit.__all__))
    assert set(bnkit.__all__) == public - modules
    assert len(bnkit.__all__) <= 40


@pytest.mark.parametrize("name", _modules())
def test_every_module_all_resolves(name: str) -> None:
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    for item in module.__all__:
        assert hasattr(module, item), f"{name}.{item}"


@pytest.mark.parametrize("name", sorted(MOVED))
def test_moved_top_level_names_still_resolve_with_a_warning(name: str) -> None:
    with pytest.warns(DeprecationWarning, match=rf"bnkit\.{name} moved to {MOVED[name]}"):
        old = getattr(bnkit, name)
    assert old is getattr(importlib.import_module(MOVED[name]), name)


@pytest.mark.parametrize(("path", "name"), sorted(DEPRECATED_MODULES.items()))
def test_moved_modules_still_resolve_with_a_warning(path: str, name: str) -> None:
    module = importlib.import_module(path)
    with pytest.warns(DeprecationWarning, match=rf"{path}\.{name} moved"):
        old = getattr(module, name)
    home = importlib.import_module(MOVED.get(name, "bnkit"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert old is getattr(home, name)
    assert callable(bnkit.presets)  # importing bnkit.presets never hides the function


def _imports(path: Path, name: str) -> set[str]:
    """The bnkit modules a module imports (anywhere in it, but not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("bnkit"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            if not base.startswith("bnkit"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if _is_module(sub) else base)
    return found - {name}


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a name inside a module, not a submodule
        return False


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for name in _modules():
        spec = importlib.util.find_spec(name)
        assert spec is not None and spec.origin is not None
        graph[name] = {m for m in _imports(Path(spec.origin), name) if m in set(_modules())}
    # Tarjan's strongly connected components: any with more than one module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []


def test_importing_bnkit_changes_no_global_state_of_torch() -> None:
    probe = """
import json, sys, torch, torch.serialization as s
def settings():
    return {
        "safe_globals": sorted(map(str, s.get_safe_globals())),
        "threads": torch.get_num_threads(),
        "grad": torch.is_grad_enabled(),
        "dtype": str(torch.get_default_dtype()),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "anomaly": torch.is_anomaly_enabled(),
        "ops": sorted(n for n in dir(torch.ops) if not n.startswith("_")),
        "warnings": len(__import__("warnings").filters),
    }
before = settings()
import bnkit, bnkit.cli
after = settings()
after["ops"] = [n for n in after["ops"] if n != "bnkit"]  # bnkit's own op namespace
print(json.dumps([before == after, before, after]))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout

    same, before, after = json.loads(out)
    assert same, (before, after)
