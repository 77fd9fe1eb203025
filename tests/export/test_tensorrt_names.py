"""Every TensorRT name our code uses exists in the real TensorRT 8.6, 10.3 and 11.4 Python bindings.

No machine here can import tensorrt (docs/facts.md#ci-machine), so the bound names were read from the
bindings wheels with ``strings`` (tools/trt_binding_names.sh) into tests/export/data/. The names
our code uses are found statically: attribute accesses on ``trt`` and on every variable assigned
from a TensorRT object (builder, network, parser, config, engine, context, ...). Limits: the check
is per name, not per class (``BuilderFlag.FP16`` passes on 11.x because other enums have an FP16),
so the 10.x/11.x branching itself is tested with a fake module in test_export_tensorrt.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).with_name("data")
# Every module that touches ``trt``: the build, the runner and the environment checks they share.
SOURCES = [ROOT / "dronseg_edge/export/tensorrt.py", ROOT / "dronseg_edge/runtime/tensorrt.py",
           ROOT / "dronseg_edge/runtime/tensorrt_env.py"]
# 8.6.1: the x86-64 bindings of the 8.6 release JetPack 6.0 ships as 8.6.2 (same API).
VERSIONS = {"8.6.1": DATA / "tensorrt-8.6.1-names.txt", "10.3.0": DATA / "tensorrt-10.3.0-names.txt",
            "11.4.0.106": DATA / "tensorrt-11.4.0.106-names.txt"}
# Names any TensorRT build path must use; if the extraction stops finding them, it has gone blind.
CORE = {"Logger", "Builder", "create_network", "OnnxParser", "parse_from_file", "num_errors", "get_error",
        "create_builder_config", "set_memory_pool_limit", "MemoryPoolType", "WORKSPACE", "build_serialized_network",
        "Runtime", "deserialize_cuda_engine", "create_execution_context", "num_io_tensors", "get_tensor_name",
        "get_tensor_mode", "set_input_shape", "set_tensor_address", "execute_async_v3", "STRONGLY_TYPED",
        "create_timing_cache", "set_timing_cache", "create_optimization_profile", "set_shape",
        # export --dla-core and --builder-opt-level (export/tensorrt.py)
        "num_DLA_cores", "DeviceType", "DLA", "default_device_type", "DLA_core", "GPU_FALLBACK",
        "builder_optimization_level"}


def _dotted(node: ast.AST) -> str | None:
    """'self._engine' for self._engine, 'trt' for trt; None for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = _dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


def _root(node: ast.AST) -> str | None:
    """The variable an expression hangs off: builder.create_network(0).name -> 'builder'."""
    while True:
        if isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted and dotted.startswith("self."):
                return ".".join(dotted.split(".")[:2])
            node = node.value
        elif isinstance(node, ast.Name):
            return node.id
        else:
            return None


def _targets(node: ast.AST) -> list[str]:
    if isinstance(node, (ast.Name, ast.Attribute)):
        name = _dotted(node)
        return [name] if name else []
    if isinstance(node, (ast.Tuple, ast.List)):
        return [t for elt in node.elts for t in _targets(elt)]
    return []


def _probed_names(test: ast.AST) -> set[str]:
    """Names an ``if`` condition probes with ``hasattr(x, "NAME")`` (alone or joined by ``and``)."""
    return {n.args[1].value for n in ast.walk(test) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
            and n.func.id == "hasattr" and len(n.args) == 2 and isinstance(n.args[1], ast.Constant)}


def _guarded_by_attribute_error(tree: ast.AST) -> set[int]:
    """ids of nodes inside ``try: ... except AttributeError``, and of ``.NAME`` reads inside
    ``if hasattr(x, "NAME"): ...`` (optional, version-dependent names)."""
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
            isinstance(h.type, ast.Name) and h.type.id == "AttributeError" for h in node.handlers
        ):
            for stmt in node.body:
                guarded.update(id(n) for n in ast.walk(stmt))
        if isinstance(node, ast.If):
            probed = _probed_names(node.test)
            for part in [node.test, *node.body]:
                guarded.update(id(n) for n in ast.walk(part) if isinstance(n, ast.Attribute) and n.attr in probed)
    return guarded


def tensorrt_names(source: str) -> tuple[set[str], set[str]]:
    """(required, optional) TensorRT attribute names used by ``source``.

    Tainted = ``trt`` plus every variable assigned (anywhere in the module) from a tainted
    expression. Required: attributes read from tainted values. Optional: names probed with
    hasattr/getattr or read inside ``try/except AttributeError``.
    """
    tree = ast.parse(source)
    tainted = {"trt"}
    changed = True
    while changed:
        changed = False
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if _root(node.value) in tainted:
                    for name in (t for target in targets for t in _targets(target)):
                        if name not in tainted:
                            tainted.add(name)
                            changed = True
            elif isinstance(node, ast.For) and _root(node.iter) in tainted:
                for name in _targets(node.target):
                    if name not in tainted:
                        tainted.add(name)
                        changed = True
    optional_ids = _guarded_by_attribute_error(tree)
    required, optional = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _root(node.value) in tainted:
            dotted = _dotted(node)
            if dotted in tainted and dotted.startswith("self."):
                continue  # our own attribute holding a TensorRT object, not a TensorRT name
            (optional if id(node) in optional_ids else required).add(node.attr)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")
                and len(node.args) >= 2 and _root(node.args[0]) in tainted and isinstance(node.args[1], ast.Constant)):
            optional.add(node.args[1].value)
    return required, optional - required


def _names(version: str) -> set[str]:
    return set(VERSIONS[version].read_text().split())


def missing_names(source: str, version_names: dict[str, set[str]]) -> dict[str, list[str]]:
    """{version: names used by ``source`` that those bindings lack} (optional names: lacking in all)."""
    required, optional = tensorrt_names(source)
    missing = {v: sorted(required - names) for v, names in version_names.items()}
    nowhere = sorted(n for n in optional if not any(n in names for names in version_names.values()))
    return {v: found + nowhere for v, found in missing.items() if found or nowhere}


@pytest.fixture(scope="module")
def version_names() -> dict[str, set[str]]:
    return {version: _names(version) for version in VERSIONS}


def test_name_lists_look_like_the_bindings(version_names):
    for version, names in version_names.items():
        assert len(names) > 5000, version
        assert {"execute_async_v3", "build_serialized_network", "set_tensor_address"} <= names
    # docs/facts.md#tensorrt-api: the implicit int8 calibrator API is gone in 11.x; build_engine_with_config is new.
    assert "int8_calibrator" in version_names["10.3.0"] and "int8_calibrator" not in version_names["11.4.0.106"]
    assert "build_engine_with_config" not in version_names["10.3.0"]
    # 8.6: explicit batch is a creation flag (gone in 11.x), strong typing and INT64 tensors do not exist yet,
    # and parser errors carry no node name (10.x+).
    assert "EXPLICIT_BATCH" in version_names["8.6.1"] and "EXPLICIT_BATCH" not in version_names["11.4.0.106"]
    assert not {"STRONGLY_TYPED", "INT64", "node_name", "node_operator"} & version_names["8.6.1"]
    assert {"STRONGLY_TYPED", "INT64", "node_name", "node_operator"} <= version_names["10.3.0"]


def test_extraction_finds_the_core_build_and_run_calls():
    used = set()
    for source in SOURCES:
        required, optional = tensorrt_names(source.read_text())
        used |= required | optional
    assert CORE <= used, sorted(CORE - used)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.parent.name + "/" + p.name)
def test_every_tensorrt_name_exists_in_8_6_10_3_and_11_4(source, version_names):
    assert missing_names(source.read_text(), version_names) == {}


def test_check_catches_names_missing_from_one_version(version_names):
    code = (
        "import tensorrt as trt\n"
        "def build(network):\n"
        "    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))\n"
        "    config = builder.create_builder_config()\n"
        "    config.int8_calibrator = None\n"
        "    engine = builder.build_engine_with_config(network, config)\n"
        "    context = engine.create_execution_context()\n"
        "    context.execute_async_v2([], 0)\n"
        "    if hasattr(trt, 'NoSuchThingAnywhere'):\n"
        "        pass\n"
        "    if hasattr(trt.DataType, 'INT64'):\n"
        "        table = {trt.DataType.INT64: 8}\n"
        "    flag = trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH\n"
    )
    missing = missing_names(code, version_names)
    assert "int8_calibrator" in missing["11.4.0.106"] and "int8_calibrator" not in missing["10.3.0"]
    assert "build_engine_with_config" in missing["10.3.0"] and "build_engine_with_config" in missing["8.6.1"]
    assert "int8_calibrator" not in missing["8.6.1"] and "execute_async_v2" not in missing["8.6.1"]
    assert "NoSuchThingAnywhere" in missing["10.3.0"] and "NoSuchThingAnywhere" in missing["11.4.0.106"]
    assert "INT64" not in missing["8.6.1"]  # read only where hasattr found it: optional, and 10.3 has it
    assert "EXPLICIT_BATCH" in missing["11.4.0.106"] and "EXPLICIT_BATCH" not in missing["8.6.1"]  # unguarded: required
