"""The package's import rule, one direction, top to bottom (docs/architecture.md):

    cli -> {bench, pipeline, export, train, data}
    bench -> export -> runtime -> base (metadata, checkpoint, models, metrics, classes, errors, ...)
    train -> {data, metrics, models, checkpoint}

Checked statically over every module of dronseg_edge/: imports at any depth (inside functions and
``if TYPE_CHECKING`` blocks too, since a lazy import is still a dependency) and module names spelled
as strings (the backend registry's ``importlib`` table).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dronseg_edge"

# The base: plain modules every layer may use; they import one another only.
BASE = frozenset({"errors", "classes", "sizes", "media", "atomic", "leftovers", "devices", "machine", "runs",
                  "onnx_wire", "metadata", "metadata_checks", "checkpoint", "torch_floor", "models", "metrics", "pictures",
                  "option_fields", "gst_encoders", "dataset_layout"})
ALL = frozenset({"root", "data", "runtime", "export", "train", "pipeline", "bench", "checks", "cli"}) | BASE

# The one table: each layer (a subpackage, or a top-level module) and what it may import besides itself.
MAY_IMPORT: dict[str, frozenset[str]] = {
    **{name: BASE for name in BASE},
    # The data set's reader, split, augmentation, RLE and synthetic scenes: nothing above the base.
    "data": BASE,
    # What runs an artifact: never export (the build) or train; the deployable path.
    "runtime": BASE,
    # data: calibration and parity images come from the data set's layout and a checkpoint's split
    # (export/images.py), and data itself stands on the base only, so nothing of train comes along.
    "export": BASE | {"runtime", "data"},
    "train": BASE | {"data"},
    # The inference pipeline is deployable: the runtime and the base only (its folder sources take
    # the image suffixes from media.py, not from data/, so no PIL and no data set reader come along).
    "pipeline": BASE | {"runtime"},
    "bench": BASE | {"export", "runtime", "data"},
    # `dronseg-edge checks` probes what this machine can run: the runtime's environment checks at most.
    "checks": BASE | {"runtime"},
    "cli": ALL - {"cli"},
    "__main__": frozenset({"cli"}),
    # dronseg_edge/__init__.py: ``from dronseg_edge import Segmenter`` (imported lazily there); any name
    # taken from the root other than a module or __version__ counts as this facade, so only cli may.
    "root": frozenset({"pipeline"}),
}

_MODULE_NAME = re.compile(r"dronseg_edge(\.[A-Za-z_][A-Za-z0-9_]*)+")


def layer_of_file(path: Path) -> str:
    """The layer of a module file: its subpackage, or a top-level module's own name."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts == ("__init__",):
        return "root"
    return parts[0]


def _layer_of_module(dotted: str) -> str:
    return dotted.split(".")[1] if dotted.count(".") else "root"


def imported_layers(source: str) -> list[tuple[int, str, str]]:
    """(line, what, layer) for every dronseg_edge import in ``source``, at any depth."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, _layer_of_module(a.name)) for a in node.names if a.name.split(".")[0] == "dronseg_edge"]
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"line {node.lineno}: relative import; the package imports absolutely")
        elif isinstance(node, ast.ImportFrom) and node.module == "dronseg_edge":
            for alias in node.names:
                if alias.name == "__version__":  # the root's constant: the root package runs first anyway
                    continue
                is_module = (PACKAGE / f"{alias.name}.py").is_file() or (PACKAGE / alias.name).is_dir()
                found.append((node.lineno, f"dronseg_edge.{alias.name}", alias.name if is_module else "root"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dronseg_edge."):
            found.append((node.lineno, node.module, _layer_of_module(node.module)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_NAME.fullmatch(node.value):
            found.append((node.lineno, node.value, _layer_of_module(node.value)))
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_place_in_the_table():
    layers = {layer_of_file(path) for path in modules()}
    assert layers - set(MAY_IMPORT) == set(), "add the new module or package to MAY_IMPORT, in its layer"


def test_the_scan_sees_lazy_string_and_root_imports():
    code = ("import dronseg_edge.metadata\n"
            "def f():\n"
            "    from dronseg_edge.runtime import tensorrt_env\n"
            "    if True:\n"
            "        import dronseg_edge.train.fit as fit\n"
            "TABLE = {'.onnx': ('dronseg_edge.export.onnx', 'X')}\n"
            "from dronseg_edge import __version__, Segmenter, pipeline\n")
    assert sorted(layer for _, _, layer in imported_layers(code)) == ["export", "metadata", "pipeline", "root", "runtime", "train"]
    # ... and on the real package it finds the edges everyone knows exist, so it has not gone blind.
    runtime_registry = imported_layers((PACKAGE / "runtime/registry.py").read_text())
    assert ("runtime" in {layer for _, _, layer in runtime_registry}
            and any(what == "dronseg_edge.runtime.onnxruntime" for _, what, _ in runtime_registry))


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_what_its_layer_may(path):
    layer = layer_of_file(path)
    allowed = MAY_IMPORT.get(layer, frozenset()) | {layer}
    wrong = [f"line {line}: {what} ({layer} may not import {target})"
             for line, what, target in imported_layers(path.read_text()) if target not in allowed]
    assert wrong == []


def _module_file(dotted: str) -> Path | None:
    """The file of module ``dronseg_edge.a.b`` (a/b.py or a/b/__init__.py), None for a name that is none."""
    relative = Path(*dotted.split(".")[1:]) if dotted.count(".") else Path()
    for candidate in (PACKAGE / relative.with_suffix(".py") if dotted.count(".") else None, PACKAGE / relative / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    """The dronseg_edge files ``path`` imports, at any depth (lazy and TYPE_CHECKING imports are edges too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "dronseg_edge":
            names = [f"{node.module}.{a.name}" if _module_file(f"{node.module}.{a.name}") else node.module
                     for a in node.names if a.name != "__version__"]  # the root's constant: it runs first anyway
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_NAME.fullmatch(node.value):
            names = [node.value]
        found |= {f for f in (_module_file(n) for n in names if n.split(".")[0] == "dronseg_edge") if f and f != path}
    return found


def import_cycles(graph: dict[Path, set[Path]]) -> list[list[Path]]:
    """The strongly connected groups of more than one file (Tarjan), each sorted."""
    index: dict[Path, int] = {}
    low: dict[Path, int] = {}
    stack: list[Path] = []
    groups: list[list[Path]] = []

    def visit(node: Path) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_cycle_check_finds_a_circle():
    a, b, c = Path("a.py"), Path("b.py"), Path("c.py")
    assert import_cycles({a: {b}, b: {c}, c: {a}}) == [[a, b, c]]
    assert import_cycles({a: {b}, b: {c}, c: set()}) == []


def test_no_two_files_import_each_other_even_through_others():
    graph = {path: imported_files(path) for path in modules()}
    cycles = [" -> ".join(str(p.relative_to(PACKAGE)) for p in group) for group in import_cycles(graph)]
    assert cycles == [], "break the circle: move what both need to the lower file, or pass it in"
