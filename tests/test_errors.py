"""Messages name the docs by URL (a pip user has no docs/ folder): one address, the same in pyproject.toml,
and every page and section a message links to exists."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

from dronseg_edge.errors import REPOSITORY_URL, docs_url

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "dronseg_edge"


def test_docs_urls_point_into_the_repository():
    assert docs_url("jetson.md") == f"{REPOSITORY_URL}/blob/main/docs/jetson.md"
    assert docs_url("jetson.md", "cameras-and-streams").endswith("/docs/jetson.md#cameras-and-streams")


def test_pyproject_urls_use_the_same_address():
    tomllib = pytest.importorskip("tomllib" if sys.version_info >= (3, 11) else "tomli")  # pytest brings tomli to 3.10
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    assert {"Homepage", "Documentation", "Issues"} <= set(urls)
    assert all(url.startswith(REPOSITORY_URL) for url in urls.values()), urls


def github_anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(doc: Path) -> set[str]:
    """The anchors of a Markdown file's headings (lines starting with # outside fenced code)."""
    found, fenced = set(), False
    for line in doc.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif line.startswith("#") and not fenced:
            found.add(github_anchor(line.lstrip("#")))
    return found


def linked_docs() -> list[tuple[str, str, str]]:
    """(file, page, section) of every docs_url(...) call in the package; names are resolved through the
    module's own string constants."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        constants = {target.id: node.value.value for node in ast.walk(tree) if isinstance(node, ast.Assign)
                     and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                     for target in node.targets if isinstance(target, ast.Name)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "docs_url":
                args = [a.value if isinstance(a, ast.Constant) else constants[a.id] for a in node.args]
                found.append((str(path.relative_to(ROOT)), args[0], args[1] if len(args) > 1 else ""))
    return found


def test_every_linked_page_and_section_exists():
    links = linked_docs()
    assert len(links) >= 5  # the scan sees the messages' links (extras, gstreamer, checks)
    for where, page, section in links:
        doc = ROOT / "docs" / page
        assert doc.is_file(), f"{where} links to docs/{page}, which does not exist"
        assert not section or section in headings(doc), f"{where} links to docs/{page}#{section}, which is no heading there"


def test_no_message_names_the_docs_folder_a_pip_user_does_not_have():
    """Strings in the package's code (not its comments or docstrings) say docs/jetson.md only as a URL."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body
                      and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                assert "docs/jetson.md" not in node.value, f"{path.relative_to(ROOT)}: {node.value[:80]!r}"
