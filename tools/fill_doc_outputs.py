"""Fill the ```text block after each ```python block of a Markdown file with what it prints.

    python tools/fill_doc_outputs.py docs/explanation/questions/momentum-zero.md [...]

A python block followed by an empty ```text block (or an existing one) gets its output written
there. tests/test_docs_examples.py checks that the docs keep printing exactly that; this tool
runs the blocks as that test does (the test session's torchvision shim installed, each block's
code registered as its source, the trainers' own warnings silenced).
"""

from __future__ import annotations

import contextlib
import io
import linecache
import re
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def fill(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    namespace: dict[str, object] = {"__name__": f"docs_{path.stem}"}
    fences = list(FENCE.finditer(text))
    replacements = []
    for i, fence in enumerate(fences):
        if fence.group(1) != "python":
            continue
        buffer = io.StringIO()
        code = fence.group(2)
        name = f"{path.name}[block {i}]"
        linecache.cache[name] = (len(code), None, code.splitlines(keepends=True), name)
        with contextlib.redirect_stdout(buffer), warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"(lightning|transformers)\.")
            exec(compile(code, name, "exec"), namespace)
        if i + 1 < len(fences):
            nxt = fences[i + 1]
            if nxt.group(1) == "text" and not text[fence.end() : nxt.start()].strip():
                body = "\n".join(line.rstrip() for line in buffer.getvalue().rstrip().splitlines())
                replacements.append((nxt.start(), nxt.end(), f"```text\n{body}\n```"))
    for start, end, new in reversed(replacements):
        text = text[:start] + new + text[end:]
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from tests.torchvision_shim import install

    install()
    for name in sys.argv[1:]:
        fill(Path(name))
