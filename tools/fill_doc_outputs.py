"""Fill the ```text block after each ```python block of a Markdown file with what it prints.

    python tools/fill_doc_outputs.py docs/questions/momentum-zero.md [...]

A python block followed by an empty ```text block (or an existing one) gets its output written
there. tests/test_docs_examples.py checks that the docs keep printing exactly that.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)


def fill(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    namespace: dict[str, object] = {"__name__": "docs"}
    fences = list(FENCE.finditer(text))
    replacements = []
    for i, fence in enumerate(fences):
        if fence.group(1) != "python":
            continue
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            exec(compile(fence.group(2), str(path), "exec"), namespace)
        if i + 1 < len(fences):
            nxt = fences[i + 1]
            if nxt.group(1) == "text" and not text[fence.end() : nxt.start()].strip():
                body = "\n".join(line.rstrip() for line in buffer.getvalue().rstrip().splitlines())
                replacements.append((nxt.start(), nxt.end(), f"```text\n{body}\n```"))
    for start, end, new in reversed(replacements):
        text = text[:start] + new + text[end:]
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        fill(Path(name))
