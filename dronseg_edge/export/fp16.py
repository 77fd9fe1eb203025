"""fp32 ONNX graph -> fp16 graph with float32 input and output (what stays fp32: docs/export.md).

Converter: ``onnxruntime.transformers.float16``, inside onnxruntime (needed anyway; onnxconverter-common
would be one more package). It converts the weights after BatchNorm was folded in fp32 (a ``.half()``
export would fold in fp16 and round twice) and keeps Resize's ``scales`` float32 as ONNX requires.
TensorRT 10.x builds fp16 from the fp32 graph with its builder flag; 11.x, without it, from this graph.
"""

from __future__ import annotations

import onnx

from dronseg_edge.errors import BackendUnavailable
from dronseg_edge.machine import onnxruntime_for_numpy_1

# Reductions over a whole feature map (ASPP image pooling, LR-ASPP's scale branch) sum up to
# ~10^4-10^5 activations before dividing: in fp16 the running sum can pass 65504. Keeping them in
# fp32 costs a Cast of one tensor each, not the convolutions' speed.
FP32_OPS = ("GlobalAveragePool", "ReduceMean", "ReduceSum", "Softmax")
FP16_MAX = 65504.0


def convert_to_fp16(graph: onnx.ModelProto, keep_fp32_nodes: tuple[str, ...] = ()) -> onnx.ModelProto:
    """An fp16 copy of ``graph``: fp16 weights and activations, float32 input/output, FP32_OPS (op types) and
    the nodes whose names start with one of ``keep_fp32_nodes`` in fp32."""
    try:
        from onnxruntime.transformers import float16
        from onnxruntime.transformers.onnx_model import OnnxModel
    except ImportError:
        raise BackendUnavailable(onnxruntime_for_numpy_1() or (
            "fp16 ONNX export needs onnxruntime (its float16 converter): pip install onnxruntime "
            "(or onnxruntime-gpu); on TensorRT 10.x build fp16 engines from the fp32 ONNX instead")
        ) from None

    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP32_OPS))
    nodes = [node.name for node in graph.graph.node if keep_fp32_nodes and node.name.startswith(keep_fp32_nodes)]
    converted = float16.convert_float_to_float16(graph, keep_io_types=True, op_block_list=block, node_block_list=nodes,
                                                 max_finite_val=FP16_MAX, disable_shape_infer=False)
    _drop_repeated_casts(converted)
    _skip_fp16_round_trips(converted)
    # The converter appends its boundary Casts after the nodes that read them; ONNX (and
    # TensorRT's parser) want nodes in topological order.
    wrapper = OnnxModel(converted)
    wrapper.topological_sort()
    return wrapper.model


def _drop_repeated_casts(graph: onnx.ModelProto) -> None:
    """onnxruntime 1.25 to 1.31's converter writes the same Cast (and its value_info) once for each fp32 node that
    reads a tensor, which breaks ONNX's single assignment (1.32 writes it once): keep the first of identical ones."""
    for entries in (graph.graph.node, graph.graph.value_info):
        seen, repeated = set(), []
        for index, entry in enumerate(entries):
            key = entry.SerializeToString(deterministic=True)
            if key in seen:
                repeated.append(index)
            seen.add(key)
        for index in reversed(repeated):
            del entries[index]


def _skip_fp16_round_trips(graph: onnx.ModelProto) -> None:
    """Between two fp32 nodes the converter still goes through fp16 (a Cast to fp16, then one back to fp32):
    the fp32 consumer reads the fp16 Cast's input instead, so blocked nodes really compute in fp32."""
    nodes = graph.graph.node
    to_fp16 = {n.output[0]: n for n in nodes if n.op_type == "Cast" and _cast_to(n) == onnx.TensorProto.FLOAT16}
    for node in nodes:
        if node.op_type == "Cast" and _cast_to(node) == onnx.TensorProto.FLOAT and node.input[0] in to_fp16:
            node.input[0] = to_fp16[node.input[0]].input[0]  # a Cast from that type (uint8, fp32) to fp32
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(graph).graph.value_info}
    types.update({v.name: v.type.tensor_type.elem_type for v in graph.graph.input})
    outputs = {o.name for o in graph.graph.output}
    same = {n.output[0]: n.input[0] for n in nodes if n.op_type == "Cast" and n.output[0] not in outputs
            and types.get(n.input[0]) == _cast_to(n)}  # Casts to the type they read: no-ops now
    for node in nodes:
        node.input[:] = [same.get(name, name) for name in node.input]
    used = {name for n in nodes for name in n.input} | outputs
    for node in [n for n in nodes if n.op_type == "Cast" and n.output[0] not in used]:
        nodes.remove(node)


def _cast_to(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "to")
