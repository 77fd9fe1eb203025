"""The house rules that keep the package readable, checked on every `make test`: no file in
dronseg_edge/ over 400 lines, no function over 80 lines outside cli/ (Typer commands list their
options in the signature). Import circles are tests/test_import_rule.py's."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dronseg_edge"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def long_functions(source: str) -> list[tuple[str, int]]:
    """(name, lines) of every function or method of ``source`` longer than MAX_FUNCTION_LINES."""
    return [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def test_no_file_is_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES}
    assert long == {}, "split the file along a seam it already has"


def test_no_function_outside_the_cli_is_over_80_lines():
    long = {f"{p.relative_to(PACKAGE)}:{name}": n for p in PACKAGE.rglob("*.py") if "cli" not in p.parts
            for name, n in long_functions(p.read_text())}
    assert long == {}, "give a part of the function a name of its own"


def test_the_function_check_counts_what_it_should():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    assert long_functions(f"def long():\n{body}\n") == [("long", MAX_FUNCTION_LINES + 1)]
    assert long_functions("def short():\n    return 1\n") == []
