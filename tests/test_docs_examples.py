"""Every ```python block in the README and the docs runs, top to bottom, one namespace per file.

A python block followed directly by a ```text block is a worked example: what the python block
prints must be exactly that text, so the numbers shown in the docs are the numbers bnkit gives.
"""

from __future__ import annotations

import contextlib
import io
import linecache
import re
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def examples(path: Path) -> list[tuple[str, str | None]]:
    """(code, expected output or None) for every python block of a file."""
    text = path.read_text(encoding="utf-8")
    fences = list(FENCE.finditer(text))
    out = []
    for i, fence in enumerate(fences):
        if fence.group(1) != "python":
            continue
        expected = None
        if i + 1 < len(fences):
            nxt = fences[i + 1]
            between = text[fence.end() : nxt.start()]
            if nxt.group(1) == "text" and not between.strip():
                expected = nxt.group(2)
        out.append((fence.group(2), expected))
    return out


def _source(name: str, code: str) -> str:
    """Register a block's code as the source of ``name``, so that ``inspect.getsource`` reads
    the functions it defines as it would from a user's file."""
    linecache.cache[name] = (len(code), None, code.splitlines(keepends=True), name)
    return name


def _norm(s: str) -> str:
    return "\n".join(line.rstrip() for line in s.strip().splitlines())


@pytest.mark.parametrize(
    "path", [f for f in FILES if examples(f)], ids=lambda p: str(p.relative_to(ROOT))
)
def test_examples_run_and_print_what_the_docs_show(path: Path) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem}"}
    for i, (code, expected) in enumerate(examples(path)):
        buffer = io.StringIO()
        try:
            with contextlib.redirect_stdout(buffer), warnings.catch_warnings():
                # the trainers' own advice and deprecations (workers, log intervals), not bnkit's
                warnings.filterwarnings("ignore", module=r"(lightning|transformers)\.")
                exec(compile(code, _source(f"{path.name}[block {i}]", code), "exec"), namespace)
        except Exception as err:  # pragma: no cover - the message is the report
            raise AssertionError(f"{path.name} block {i} failed: {err!r}\n{code}") from err
        if expected is not None:
            assert _norm(buffer.getvalue()) == _norm(expected), f"{path.name} block {i} output"
