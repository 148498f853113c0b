"""The documentation site: it builds without a warning (mkdocs --strict), works offline (a local
search index, no asset from another site), documents every public name, and its front page
reaches every how-to guide in one click."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml

import bnkit

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# The public modules: every name in their ``__all__`` must be documented in the reference.
PUBLIC_MODULES = [
    "bnkit",
    "bnkit.apply",
    "bnkit.convert",
    "bnkit.diagnostics",
    "bnkit.distributed",
    "bnkit.errors",
    "bnkit.explain",
    "bnkit.functional",
    "bnkit.integrations",
    "bnkit.integrations.lightning",
    "bnkit.integrations.transformers",
    "bnkit.layers",
    "bnkit.policy",
    "bnkit.reference",
    "bnkit.stats",
    "bnkit.study",
    "bnkit.tent",
    "bnkit.training",
]
OFF_SITE = re.compile(
    r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)\s*=\s*[\"']?(?:https?:)?//", re.IGNORECASE
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("mkdocs") is None and not (Path(sys.executable).parent / "mkdocs").exists():
        pytest.fail("mkdocs is not installed: install the [docs] extra (make test does)")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert done.returncode == 0 and not warnings, done.stderr[-3000:]
    return out


def _inventory(site: Path) -> dict[str, str]:
    """``name -> page`` of every object mkdocstrings rendered (the Sphinx inventory)."""
    header, body = (site / "objects.inv").read_bytes().split(b"zlib.\n", 1)
    assert header.startswith(b"# Sphinx inventory version 2")
    found = {}
    for line in zlib.decompress(body).decode().splitlines():
        name, _domain, _priority, uri = line.split(" ", 4)[:4]
        found[name] = uri.split("#", 1)[0]
    return found


def _nav_pages(section: str) -> list[str]:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    for entry in config["nav"]:
        if section in entry:
            return [next(iter(item.values())) for item in entry[section]]
    raise AssertionError(f"no {section!r} section in the nav of mkdocs.yml")


def test_the_site_builds_strict_without_warnings(site: Path) -> None:
    for page in ("explanation/questions/when-to-freeze", "how-to/freeze-pretrained", "reference"):
        assert (site / page / "index.html").exists(), page


def test_search_works_offline_from_a_local_index(site: Path) -> None:
    index = json.loads((site / "search" / "search_index.json").read_text(encoding="utf-8"))
    pages = {doc["location"].split("#")[0] for doc in index["docs"]}
    assert {"how-to/freeze-pretrained/", "tutorials/new-domain/", "reference/apply/"} <= pages
    assert any("register_layer" in doc["text"] for doc in index["docs"])
    assert (site / "search" / "worker.js").exists() and (site / "search" / "lunr.js").exists()


def test_no_page_loads_anything_from_another_site(site: Path) -> None:
    remote = {
        f"{page.relative_to(site)}: {match.group(0)}"
        for page in site.rglob("*.html")
        for match in OFF_SITE.finditer(page.read_text(encoding="utf-8"))
    }
    assert not remote, sorted(remote)[:10]


def test_every_public_name_is_in_the_reference(site: Path) -> None:
    rendered = {name for name, page in _inventory(site).items() if page.startswith("reference/")}
    missing = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            if module_name == "bnkit" and name == "__version__":
                continue  # a string, named in the reference's overview
            obj = getattr(module, name)
            home = f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"
            if f"{module_name}.{name}" not in rendered and home not in rendered:
                missing.append(f"{module_name}.{name}")
    assert not missing, f"not in the reference pages: {missing}"


def test_the_reference_overview_lists_every_top_level_name() -> None:
    overview = (DOCS / "reference" / "index.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`bnkit\.(\w+)`", overview))
    assert set(bnkit.__all__) <= listed, set(bnkit.__all__) - listed


def test_every_how_to_is_one_click_from_the_front_page() -> None:
    front = (DOCS / "index.md").read_text(encoding="utf-8")
    links = set(re.findall(r"\]\(([^)#]+\.md)(?:#[^)]*)?\)", front))
    how_tos = _nav_pages("How-to guides")
    assert how_tos, "no how-to guides in the nav"
    assert not set(how_tos) - links, set(how_tos) - links
    on_disk = {p.relative_to(DOCS).as_posix() for p in (DOCS / "how-to").glob("*.md")}
    assert on_disk <= set(how_tos), on_disk - set(how_tos)
