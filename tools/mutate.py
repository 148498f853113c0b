"""Mutation testing of bnkit's numerical core: does the test suite notice when the code is wrong?

Each mutant changes one thing in one of the target modules (an arithmetic or comparison
operator, a boolean or small constant, a dropped call, ``and``/``or``, a removed ``not``); the
tests are run against it from a copy of ``src/`` that shadows the installed package; a mutant the
tests still pass on *survives*. The score is killed / (killed + survived); mutants that make the
code fail to import or time out count as killed, equivalent ones have to be read by hand.

    python tools/mutate.py --out mutants.json [--targets FILE ...] [--tests PATH ...]
    python tools/mutate.py --report mutants.json

By default the targets are the forward paths and ``bnkit.functional``; the tests are the suites
that check them (the property suite, the managed layer, the strategies, training loops).
``--root`` runs on another checkout (an older commit, for a before/after score).
"""

from __future__ import annotations

import argparse
import ast
import copy
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

TARGETS = [
    "src/bnkit/functional/stats.py",
    "src/bnkit/functional/normalize.py",
    "src/bnkit/functional/strategies.py",
    "src/bnkit/functional/_autograd.py",
    "src/bnkit/layers/paths.py",
    "src/bnkit/layers/update.py",
    "src/bnkit/layers/masked.py",
    "src/bnkit/layers/inputs.py",
    "src/bnkit/layers/pending.py",
    "src/bnkit/layers/recompute.py",
]
TESTS = [
    "tests/test_properties.py",
    "tests/test_managed.py",
    "tests/test_strategies.py",
    "tests/test_reference.py",
    "tests/test_errors.py",
    "tests/layers",
    "tests/training",
]
SWAPS: dict[type, type] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
    ast.And: ast.Or, ast.Or: ast.And,
}  # fmt: skip


def _skipped(node: ast.AST, parents: dict[int, ast.AST]) -> bool:
    """Docstrings, annotations, ``__all__``, error messages: not behaviour."""
    current: ast.AST | None = node
    while current is not None:
        if isinstance(current, ast.JoinedStr | ast.arg):
            return True
        parent = parents.get(id(current))
        if isinstance(parent, ast.Raise) or (
            isinstance(parent, ast.AnnAssign) and parent.annotation is current
        ):
            return True
        current = parent
    return False


def mutations(tree: ast.Module) -> Iterator[tuple[int, str]]:
    """``(index, description)`` of every mutation of ``tree`` (applied by :func:`apply`)."""
    for index, (node, what) in enumerate(_sites(tree)):
        yield index, f"line {getattr(node, 'lineno', '?')}: {what}"


def _sites(tree: ast.Module) -> list[tuple[ast.AST, str]]:
    parents = {id(c): p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    sites: list[tuple[ast.AST, str]] = []
    for node in ast.walk(tree):
        if _skipped(node, parents):
            continue
        if isinstance(node, ast.BinOp | ast.AugAssign | ast.BoolOp) and type(node.op) in SWAPS:
            sites.append((node, f"{type(node.op).__name__} -> {SWAPS[type(node.op)].__name__}"))
        elif isinstance(node, ast.Compare) and type(node.ops[0]) in SWAPS:
            op = type(node.ops[0])
            sites.append((node, f"{op.__name__} -> {SWAPS[op].__name__}"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            sites.append((node, "not x -> x"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            sites.append((node, f"{node.value} -> {not node.value}"))
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
            sites.append((node, f"{node.value!r} -> {node.value + 1!r}"))
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
            sites.append((node, f"drop {ast.unparse(node.value)[:60]}"))
    return sites


def apply(tree: ast.Module, index: int) -> ast.Module:
    """A copy of ``tree`` with mutation ``index`` applied."""
    mutant = copy.deepcopy(tree)
    node, _ = _sites(mutant)[index]
    if isinstance(node, ast.BinOp | ast.AugAssign | ast.BoolOp):
        node.op = SWAPS[type(node.op)]()
    elif isinstance(node, ast.Compare):
        node.ops[0] = SWAPS[type(node.ops[0])]()
    elif isinstance(node, ast.UnaryOp):
        _replace(mutant, node, node.operand)
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        node.value = not node.value
    elif isinstance(node, ast.Constant):
        node.value = node.value + 1
    elif isinstance(node, ast.Expr):
        node.value = ast.Constant(value=None)
    return ast.fix_missing_locations(mutant)


def _replace(tree: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for parent in ast.walk(tree):
        for field, value in ast.iter_fields(parent):
            if value is old:
                setattr(parent, field, new)
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if item is old:
                        value[i] = new


def run_tests(src: Path, tests: list[str], root: Path, timeout: float) -> str:
    """``"killed"``, ``"survived"`` or ``"timeout"`` for the tests run on ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src), "CI": "true", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    try:
        done = subprocess.run(
            [*cmd, *tests], cwd=root, env=env, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return "timeout"
    return "survived" if done.returncode == 0 else "killed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--targets", nargs="*", default=TARGETS)
    parser.add_argument("--tests", nargs="*", default=TESTS)
    parser.add_argument("--out", type=Path, default=Path("mutants.json"))
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--report", type=Path, help="summarize a results file and stop")
    parser.add_argument("--sample", type=int, help="run a random sample of this many mutants")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--retest", action="store_true", help="run the survivors of --out again with --tests"
    )
    args = parser.parse_args()
    if args.report:
        report(json.loads(args.report.read_text()))
        return
    chosen = None
    if args.sample:
        everything = [
            f"{t}#{i}"
            for t in args.targets
            for i, _ in mutations(ast.parse((args.root / t).read_text()))
        ]
        chosen = set(random.Random(args.seed).sample(everything, min(args.sample, len(everything))))
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(args.root / "src", src)
        if run_tests(src, args.tests, args.root, args.timeout) != "survived":
            raise SystemExit("the tests fail on the unmutated code; fix that first")
        for target in args.targets:  # from the copy: edits to the checkout meanwhile are ignored
            copy_path = src / Path(target).relative_to("src")
            original = copy_path.read_text()
            tree = ast.parse(original)
            for index, what in mutations(tree):
                key = f"{target}#{index}"
                if args.retest:
                    if results.get(key, {}).get("outcome") != "survived":
                        continue
                elif key in results or (chosen is not None and key not in chosen):
                    continue
                copy_path.write_text(ast.unparse(apply(tree, index)))
                start = time.monotonic()
                outcome = run_tests(src, args.tests, args.root, args.timeout)
                seconds = time.monotonic() - start
                results[key] = {"what": what, "outcome": outcome, "seconds": seconds}
                args.out.write_text(json.dumps(results, indent=1))
                print(f"{outcome:8s} {key} {what}", flush=True)
            copy_path.write_text(original)
    report(results)


def report(results: dict[str, dict[str, object]]) -> None:
    killed = sum(r["outcome"] != "survived" for r in results.values())
    survived = [k for k, r in results.items() if r["outcome"] == "survived"]
    total = len(results)
    score = killed / max(total, 1)
    half = 1.96 * (score * (1 - score) / max(total, 1)) ** 0.5
    print(
        f"{total} mutants, {killed} killed, {len(survived)} survived: score {score:.1%} "
        f"(± {half:.1%}, 95% binomial interval when they are a sample)"
    )
    for key in survived:
        print(f"  survived {key}: {results[key]['what']}")


if __name__ == "__main__":
    main()
