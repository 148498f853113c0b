"""mkdocs hook: bnkit's docstrings are written for ``help()`` and Sphinx (``:func:`name```,
``.. math::`` blocks, ``text::`` before a literal block); the reference renders them as code.

Listed under ``hooks:`` in mkdocs.yml; it only rewrites the HTML of each page.
"""

from __future__ import annotations

import re
from typing import Any

ROLE = re.compile(r":(?:func|class|mod|meth|attr|data|exc|obj|math):<code>~?")
MATH_BLOCK = re.compile(r"<p>\.\. math::</p>\s*")
LITERAL_INTRO = re.compile(r"::</p>")


def on_page_content(html: str, **_: Any) -> str:
    html = ROLE.sub("<code>", html)
    html = MATH_BLOCK.sub("", html)
    return LITERAL_INTRO.sub(":</p>", html)
