"""Every ``cuda.bindings.runtime`` name our code uses exists, with the argument count we call it with,
in cuda-bindings 12.9 (JetPack 6's CUDA 12) and 13.5 (CUDA 13, the GPU machine's torch).

The lists in tests/runtime/data/ were written from the released wheels by
tests/runtime/data/cudart_names.py: public names, each function as its signature (the first line of
its docstring), each enum member as ``Enum.member``. The names our code uses are found statically:
attributes of ``cudart()`` and of every variable assigned from it, calls with their positional and
keyword arguments. The fake binding the CPU tests use (fake_cudart.py) is held to the same lists, so
the tests cannot pass against a call the real binding lacks.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATA = Path(__file__).with_name("data")
SOURCES = [ROOT / "dronseg_edge/runtime/cuda_runtime.py", ROOT / "dronseg_edge/runtime/tensorrt.py"]
VERSIONS = {"12.9.10": DATA / "cuda-bindings-12.9.10-runtime.txt", "13.5.0": DATA / "cuda-bindings-13.5.0-runtime.txt"}
# What the wrapper must use; if the extraction stops finding these, it has gone blind.
CORE = {"cudaMalloc", "cudaFree", "cudaMallocHost", "cudaFreeHost", "cudaMemcpyAsync", "cudaStreamCreateWithFlags",
        "cudaStreamNonBlocking", "cudaStreamSynchronize", "cudaStreamDestroy", "cudaStreamBeginCapture",
        "cudaStreamEndCapture", "cudaGraphInstantiate", "cudaGraphLaunch", "cudaGraphExecDestroy", "cudaGraphDestroy",
        "cudaGetDevice", "cudaSetDevice", "cudaGetDeviceProperties", "cudaGetErrorString",
        "cudaMemcpyKind.cudaMemcpyHostToDevice", "cudaMemcpyKind.cudaMemcpyDeviceToHost",
        "cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal"}


class Signature:
    """Parameter names of a binding function, from ``cudaMemcpyAsync(dst, src, size_t count, kind: cudaMemcpyKind, stream)``."""

    def __init__(self, line: str):
        self.name, _, rest = line.partition("(")
        params, depth, current = [], 0, ""
        for char in rest.rstrip(")"):
            depth += char == "[" or char == "("
            depth -= char == "]" or char == ")"
            if char == "," and depth == 0:
                params.append(current)
                current = ""
            else:
                current += char
        if current.strip():
            params.append(current)
        self.params = [re.split(r"[:=]", p)[0].split()[-1].lstrip("*") for p in params]
        self.required = sum(1 for p in params if "=" not in p)

    def problem(self, positional: int, keywords: list[str]) -> str | None:
        if positional > len(self.params):
            return f"{self.name} takes {len(self.params)} arguments ({', '.join(self.params)}), called with {positional}"
        unknown = [k for k in keywords if k not in self.params[positional:]]
        if unknown:
            return f"{self.name} has no keyword {unknown} ({', '.join(self.params)})"
        if positional + len(keywords) < self.required:
            return f"{self.name} needs {self.required} arguments ({', '.join(self.params)}), called with {positional + len(keywords)}"
        return None


def load_names(path: Path) -> tuple[set[str], dict[str, Signature]]:
    """(every name, including Enum.member; signatures of the functions) from a stored list."""
    names, signatures = set(), {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if "(" in line:
            signature = Signature(line)
            signatures[signature.name] = signature
            names.add(signature.name)
        else:
            names.add(line.strip())
    return names, signatures


def _is_binding(node: ast.AST, bound: set[str]) -> bool:
    """``cudart()`` or a variable assigned from it."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "cudart":
        return True
    return isinstance(node, ast.Name) and node.id in bound


def used_names(source: str) -> tuple[set[str], list[tuple[str, int, list[str]]]]:
    """(names used, calls as (name, positional count, keyword names)) of the binding in ``source``."""
    tree = ast.parse(source)
    bound = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) and _is_binding(node.value, set())
             for t in node.targets if isinstance(t, ast.Name)}
    names, calls = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_binding(node.value, bound):
            names.add(node.attr)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and _is_binding(node.value.value, bound):
            names.add(f"{node.value.attr}.{node.attr}")  # an enum member: rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and _is_binding(node.func.value, bound):
            if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
                raise AssertionError(f"{node.func.attr}: *args/**kwargs cannot be checked; spell the arguments out")
            calls.append((node.func.attr, len(node.args), [k.arg for k in node.keywords]))
    return names, calls


def problems(source: str, lists: dict[str, tuple[set[str], dict[str, Signature]]]) -> dict[str, list[str]]:
    """{version: what in ``source`` that binding lacks or is called wrongly}."""
    names, calls = used_names(source)
    found = {}
    for version, (known, signatures) in lists.items():
        wrong = sorted(f"{n} does not exist" for n in names - known)
        wrong += sorted(p for name, positional, keywords in calls if name in signatures
                        for p in [signatures[name].problem(positional, keywords)] if p)
        if wrong:
            found[version] = wrong
    return found


@pytest.fixture(scope="module")
def lists() -> dict[str, tuple[set[str], dict[str, Signature]]]:
    return {version: load_names(path) for version, path in VERSIONS.items()}


def test_lists_look_like_the_two_bindings(lists):
    for version, (names, signatures) in lists.items():
        assert len(names) > 1000 and len(signatures) > 300, version
        assert signatures["cudaMemcpyAsync"].params == ["dst", "src", "count", "kind", "stream"]
        assert VERSIONS[version].read_text().startswith(f"# cuda.bindings.runtime of cuda-bindings {version} ")
    # 13.x dropped the _v2 graph-edge calls 12.x had, and added graph ids.
    assert "cudaGraphAddNode_v2" in lists["12.9.10"][0] and "cudaGraphAddNode_v2" not in lists["13.5.0"][0]
    assert "cudaGraphGetId" in lists["13.5.0"][0] and "cudaGraphGetId" not in lists["12.9.10"][0]


def test_extraction_finds_the_core_calls():
    used = set()
    for source in SOURCES:
        used |= used_names(source.read_text())[0]
    assert CORE <= used, sorted(CORE - used)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.name)
def test_every_binding_name_and_call_exists_in_12_9_and_13_5(source, lists):
    assert problems(source.read_text(), lists) == {}


def test_check_catches_missing_names_and_wrong_argument_counts(lists):
    code = (
        "def f():\n"
        "    rt = cudart()\n"
        "    rt.cudaMemcpyAsync(1, 2, 3, rt.cudaMemcpyKind.cudaMemcpyHostToDevice)\n"
        "    rt.cudaGraphInstantiate(g, 0, 1)\n"
        "    cudart().cudaMallocAsync(16, stream=s, flags=0)\n"
        "    rt.cudaMemcpyKind.cudaMemcpyHostToGPU\n"
        "    rt.cudaGraphAddNode_v2\n"
    )
    found = problems(code, lists)
    for version in VERSIONS:
        assert "cudaMemcpyAsync needs 5 arguments (dst, src, count, kind, stream), called with 4" in found[version]
        assert "cudaGraphInstantiate takes 2 arguments (graph, flags), called with 3" in found[version]
        assert "cudaMallocAsync has no keyword ['stream', 'flags'] (size, hStream)" in found[version]
        assert "cudaMemcpyKind.cudaMemcpyHostToGPU does not exist" in found[version]
    assert "cudaGraphAddNode_v2 does not exist" in found["13.5.0"] and "cudaGraphAddNode_v2 does not exist" not in found["12.9.10"]


def test_the_fake_binding_is_held_to_the_same_lists(lists):
    from fake_cudart import FakeCudart, cudaError_t, cudaMemcpyKind, cudaStreamCaptureMode

    for version, (names, signatures) in lists.items():
        for name, member in inspect.getmembers(FakeCudart, inspect.isfunction):
            if not name.startswith("cuda"):
                continue
            assert name in signatures, f"{name} is not in cuda-bindings {version}"
            params = list(inspect.signature(member).parameters)[1:]
            assert params == signatures[name].params, f"{name}{params} differs from {version}: {signatures[name].params}"
        for enum in (cudaError_t, cudaMemcpyKind, cudaStreamCaptureMode):
            assert {f"{enum.__name__}.{m}" for m in enum.__members__} <= names, version
        assert "cudaStreamNonBlocking" in names


@pytest.mark.skipif(importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None,
                    reason="cuda-bindings is not installed")
def test_every_name_exists_in_the_installed_binding_too():
    """A cuda-bindings newer than the stored lists could drop a name: the installed one is checked as well."""
    from cuda.bindings import runtime

    for source in SOURCES:
        names, _ = used_names(source.read_text())
        missing = [n for n in names if not _resolves(runtime, n)]
        assert missing == [], f"{source.name}: {missing}"


def _resolves(module, dotted: str) -> bool:
    obj = module
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True
