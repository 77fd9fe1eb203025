"""TensorRT's ONNX-parser restrictions for the ops our exported graphs can hold, as onnx-tensorrt's source states them.

A test tool (no TensorRT can be installed on these machines): ``check_graph(model)`` lists every node
the parser of TensorRT 8.6 or 10.x would refuse. Sources, read from the repository itself
(``fetch github:onnx/onnx-tensorrt``, ``git show REF:path``):

- 10.x: branch ``10.1-GA``, commit 96e781103cfc (2024-06-17): ``docs/operators.md`` (types and
  restrictions per op, "opset 9 to opset 20", "UINT8 is only supported as network input or output"),
  ``onnxOpCheckers.cpp`` (Resize, Slice, ArgMax, pooling, Cast, Constant checks), ``ModelImporter.cpp``
  (a node may output UINT8 only as a graph output). The ``onnxOpCheckers.cpp`` of a later 10.x
  (commit dd0a3a9f8794, from the code index) has the same Resize/Slice/TopK/ArgMax/pooling checks.
- 8.6: branch ``8.6-GA``, commit ee0b139bc685: ``docs/operators.md`` ("up to Opset 17"; INT64 cast
  down to INT32), ``builtin_op_importers.cpp`` (Resize: linear on the innermost 3 dims only),
  ``ModelImporter.cpp`` (the same UINT8 rule).
- TensorRT's ``DataType.UINT8`` documentation (8.6.1 and the current one): uint8 converts only to and
  from float32/float16, and a uint8 network input must be converted before any other layer.
TensorRT 11.x: no onnx-tensorrt 11 source is here; the 10.x rules are applied to it unverified.
Only the ops an export of ours can contain are in the table; any other op is reported as unknown.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

VERSIONS = ("8.6", "10")
OPSETS = {"8.6": (7, 17), "10": (9, 20)}
_NAMES = {TensorProto.FLOAT: "FP32", TensorProto.FLOAT16: "FP16", TensorProto.BFLOAT16: "BF16",
          TensorProto.DOUBLE: "DOUBLE", TensorProto.INT32: "INT32", TensorProto.INT64: "INT64",
          TensorProto.INT8: "INT8", TensorProto.UINT8: "UINT8", TensorProto.BOOL: "BOOL"}
# docs/operators.md notes: 8.6 casts INT64 down to INT32 and DOUBLE to FLOAT; 10.x casts DOUBLE down.
_DOWNCAST = {"8.6": {"INT64": "INT32", "DOUBLE": "FP32"}, "10": {"DOUBLE": "FP32"}}

FLOATS_86, FLOATS_10 = "FP32 FP16", "FP32 FP16 BF16"
INTS_86, INTS_10 = "FP32 FP16 INT32", "FP32 FP16 BF16 INT32 INT64"
SHAPE_86, SHAPE_10 = "FP32 FP16 INT32 INT8 BOOL", "FP32 FP16 BF16 INT32 INT64 BOOL"


@dataclass
class Graph:
    """What the checks read: the version judged, opset, tensor types and constant values."""

    version: str
    opset: int
    types: dict[str, str]
    constants: dict[str, np.ndarray]
    outputs: set[str]


@dataclass(frozen=True)
class OpRule:
    """docs/operators.md's "Supported Types" per version (of the inputs at ``data``) and the op's checks."""

    types_86: str
    types_10: str
    data: tuple[int, ...] = (0,)
    checks: tuple[Callable[[onnx.NodeProto, Graph], list[str]], ...] = field(default=())


def _attrs(node: onnx.NodeProto) -> dict:
    values = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _constant_input(index: int, what: str, versions=VERSIONS):
    def check(node, graph):
        if graph.version in versions and len(node.input) > index and node.input[index] \
                and node.input[index] not in graph.constants:
            return [f"`{what}` must be an initializer"]
        return []
    return check


def _resize(node, graph):
    a, problems = _attrs(node), []
    mode = a.get("mode", "nearest")
    if mode not in ("nearest", "linear"):
        problems.append(f"resize mode {mode!r}: supported nearest, linear")
    transform = a.get("coordinate_transformation_mode", "half_pixel")
    if transform not in ("half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"):
        problems.append(f"coordinate_transformation_mode {transform!r} is not supported")
    nearest = a.get("nearest_mode", "round_prefer_floor")
    if mode == "nearest" and nearest not in ("floor", "ceil", "round_prefer_floor", "round_prefer_ceil"):
        problems.append(f"nearest_mode {nearest!r} is not supported")
    if transform == "tf_half_pixel_for_nn" and nearest != "round_prefer_floor":
        problems.append("tf_half_pixel_for_nn needs nearest_mode round_prefer_floor")
    if a.get("antialias", 0):
        problems.append("Antialiasing is not supported")
    if a.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        problems.append("only `stretch` is supported as keep_aspect_ratio_policy")
    scales = node.input[2] if len(node.input) > 2 else ""
    if scales and scales in graph.constants and graph.constants[scales].size:
        scaled = np.flatnonzero(graph.constants[scales] != 1)
        if graph.version == "8.6" and mode == "linear" and scaled.size and scaled.min() < len(graph.constants[scales]) - 3:
            problems.append("linear resizing only on the innermost 3 dimensions (8.6)")
    elif scales and "axes" in a and list(a["axes"]) != list(range(len(a["axes"]))):
        problems.append("with a scales tensor, `axes` must be an iota vector")
    return problems


def _slice(node, graph):
    problems = [] if 3 <= len(node.input) <= 5 else ["Slice needs 3 - 5 inputs (opset >= 10)"]
    return problems + _constant_input(3, "axes")(node, graph)


def _pool(node, graph):
    a, problems = _attrs(node), []
    if len(a.get("kernel_shape", [])) not in (2, 3):
        problems.append("2D or 3D pooling only")
    if any(d != 1 for d in a.get("dilations", [])):
        problems.append("`dilations` must be empty or all ones")
    if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
        problems.append("`Indices` output tensor unsupported")
    return problems


def _zero_point(node, graph):
    if len(node.input) < 3 or not node.input[2]:
        return []
    if node.input[2] not in graph.constants:
        return ["the zero point must be an initializer"]
    return [] if not np.any(graph.constants[node.input[2]]) else ["the zero point must be zero"]


def _argmax(node, graph):
    if _attrs(node).get("select_last_index", 0) and graph.opset < 12:
        return ["select_last_index needs opset >= 12"]
    return []


def _topk(node, graph):
    a, problems = _attrs(node), []
    if graph.version == "10":
        if a.get("sorted", 1) != 1:
            problems.append("`sorted` must be 1")
        k = graph.constants.get(node.input[1]) if len(node.input) > 1 else None
        if k is not None and int(k.ravel()[0]) >= 3840:
            problems.append("`K` must be less than 3840")
    return problems


def _cast(node, graph):
    to = _attrs(node)["to"]
    name = _NAMES.get(to)
    if name is None or (name == "INT8" and graph.version == "10"):  # 10.x: INT8 only through Q/DQ
        return [f"Cast to {TensorProto.DataType.Name(to)} is not supported"]
    source = graph.types.get(node.input[0])
    if "UINT8" in (name, source) and ({name, source} - {"UINT8"}) - {"FP32", "FP16"}:
        return [f"uint8 converts only to and from float32/float16, not {source} -> {name} (TensorRT DataType docs)"]
    return []


def _constant(node, graph):
    if {"sparse_value", "value_string", "value_strings"} & set(_attrs(node)):
        return ["sparse_value, value_string and value_strings are unsupported"]
    return []


_BINARY = (0, 1)
RULES: dict[str, OpRule] = {
    "Abs": OpRule(INTS_86, INTS_10), "Add": OpRule(INTS_86, INTS_10, _BINARY), "And": OpRule("BOOL", "BOOL", _BINARY),
    "ArgMax": OpRule(INTS_86, INTS_10, checks=(_argmax,)),
    "AveragePool": OpRule("FP32 FP16 INT8 INT32", FLOATS_10, checks=(_pool,)),
    "Cast": OpRule("FP32 FP16 INT32 INT8 UINT8 BOOL", "FP32 FP16 BF16 INT32 INT64 UINT8 BOOL", checks=(_cast,)),
    "Clip": OpRule("FP32 FP16 INT8", FLOATS_10), "Concat": OpRule(SHAPE_86, SHAPE_10),
    "Constant": OpRule(SHAPE_86, SHAPE_10, data=(), checks=(_constant,)),
    "Conv": OpRule("FP32 FP16 INT8", FLOATS_10),
    "DequantizeLinear": OpRule("INT8", "INT8 FP8 INT4", checks=(_zero_point,)),
    "Div": OpRule(INTS_86, INTS_10, _BINARY), "Equal": OpRule(INTS_86, INTS_10, _BINARY),
    "Exp": OpRule(FLOATS_86, FLOATS_10), "Gather": OpRule("FP32 FP16 INT8 INT32 BOOL", SHAPE_10),
    "GlobalAveragePool": OpRule("FP32 FP16 INT8", FLOATS_10),
    "Greater": OpRule(INTS_86, INTS_10, _BINARY), "GreaterOrEqual": OpRule(INTS_86, INTS_10, _BINARY),
    "HardSigmoid": OpRule("FP32 FP16 INT8", FLOATS_10), "HardSwish": OpRule("FP32 FP16 INT8", FLOATS_10),
    "Identity": OpRule(SHAPE_86, SHAPE_10), "MatMul": OpRule(FLOATS_86, FLOATS_10, _BINARY),
    "Max": OpRule(INTS_86, INTS_10, _BINARY), "Min": OpRule(INTS_86, INTS_10, _BINARY),
    "MaxPool": OpRule("FP32 FP16 INT8", FLOATS_10, checks=(_pool,)), "Mul": OpRule(INTS_86, INTS_10, _BINARY),
    "Pad": OpRule("FP32 FP16 INT8 INT32", INTS_10, checks=(_constant_input(3, "axes", ("10",)),)),
    "QuantizeLinear": OpRule(FLOATS_86, FLOATS_10, checks=(_zero_point,)),
    "Range": OpRule("FP32 FP16 INT32", INTS_10),
    "ReduceMax": OpRule(FLOATS_86, INTS_10, checks=(_constant_input(1, "axes", ("10",)),)),
    "ReduceMean": OpRule(FLOATS_86, INTS_10, checks=(_constant_input(1, "axes", ("10",)),)),
    "ReduceSum": OpRule(FLOATS_86, INTS_10, checks=(_constant_input(1, "axes", ("10",)),)),
    "Relu": OpRule("FP32 FP16 INT8", INTS_10), "Reshape": OpRule(SHAPE_86, SHAPE_10),
    "Resize": OpRule(FLOATS_86, FLOATS_10, checks=(_resize,)), "Round": OpRule("FP32 FP16 INT8", FLOATS_10),
    "Shape": OpRule(SHAPE_86, SHAPE_10), "Sigmoid": OpRule("FP32 FP16 INT8", FLOATS_10),
    "Slice": OpRule(SHAPE_86, SHAPE_10, checks=(_slice,)), "Softmax": OpRule(FLOATS_86, FLOATS_10),
    "Squeeze": OpRule(SHAPE_86, SHAPE_10, checks=(_constant_input(1, "axes"),)),
    "Sub": OpRule(INTS_86, INTS_10, _BINARY), "TopK": OpRule(INTS_86, INTS_10, checks=(_topk,)),
    "Transpose": OpRule(SHAPE_86, SHAPE_10),
    "Unsqueeze": OpRule(SHAPE_86, SHAPE_10, checks=(_constant_input(1, "axes"),)),
    "Where": OpRule("FP32 FP16 INT32 BOOL", SHAPE_10, (1, 2)),
}


def _graph(model: onnx.ModelProto, version: str) -> Graph:
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {v.name: _NAMES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type))
             for v in [*g.input, *g.output, *g.value_info]}
    constants = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for node in g.node:
        if node.op_type == "Constant" and "value" in _attrs(node):
            constants[node.output[0]] = numpy_helper.to_array(_attrs(node)["value"])
    types.update({name: _NAMES.get(numpy_helper.from_array(v).data_type, "?") for name, v in constants.items()})
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return Graph(version, opset, types, constants, {o.name for o in g.output})


def _uint8(model: onnx.ModelProto, graph: Graph) -> list[str]:
    """UINT8 only at the network's edges (ModelImporter.cpp), converted by a Cast right there (DataType docs)."""
    problems = []
    uint8_inputs = {i.name for i in model.graph.input if graph.types.get(i.name) == "UINT8"}
    for node in model.graph.node:
        for name in node.output:
            if graph.types.get(name) == "UINT8" and name not in graph.outputs:
                problems.append(f"{node.name or node.op_type}: UINT8 tensor {name!r} is not a graph output "
                                "(TensorRT does not support UINT8 types for intermediate tensors)")
        if node.op_type != "Cast" and uint8_inputs & set(node.input):
            problems.append(f"{node.name or node.op_type} ({node.op_type}) reads a UINT8 network input: convert it "
                            "with a Cast to float first")
    return problems


def check_graph(model: onnx.ModelProto, versions: tuple[str, ...] = VERSIONS) -> list[str]:
    """Every restriction of TensorRT's ONNX parser (``versions`` of it) that ``model`` breaks, one line each."""
    problems = []
    for version in versions:
        graph = _graph(model, version)
        low, high = OPSETS[version]
        if not low <= graph.opset <= high:
            problems.append(f"{version}: opset {graph.opset} is outside {low}..{high}")
        problems += [f"{version}: {p}" for p in _uint8(model, graph)]
        for node in model.graph.node:
            problems += [f"{version}: {node.name or node.op_type} ({node.op_type}): {p}" for p in _node(node, graph)]
    return problems


def _node(node: onnx.NodeProto, graph: Graph) -> list[str]:
    rule = RULES.get(node.op_type)
    if rule is None or node.domain not in ("", "ai.onnx"):
        return [f"{node.op_type} is not in the operator table of this checker: read docs/operators.md first"]
    allowed = set((rule.types_86 if graph.version == "8.6" else rule.types_10).split())
    problems = []
    for index in rule.data:
        if index < len(node.input) and node.input[index]:
            found = graph.types.get(node.input[index], "?")
            found = _DOWNCAST[graph.version].get(found, found)
            if found not in allowed:
                problems.append(f"input {node.input[index]!r} is {found}; supported: {', '.join(sorted(allowed))}")
    for check in rule.checks:
        problems += check(node, graph)
    return problems
