"""fp32 ONNX graph -> fp16 graph with float32 input and output.

Converter: ``onnxruntime.transformers.float16.convert_float_to_float16``. It ships inside
onnxruntime (already needed to run and parity-check ONNX files, so no new dependency), converts
the weights after BatchNorm has been folded in fp32 (exporting a ``.half()`` model would fold in
fp16 and round twice), keeps Resize's ``scales`` in float32 as the ONNX spec requires, and with
``keep_io_types`` puts Casts at the boundaries so every runner feeds the same float32 batch.
onnxconverter-common does the same but would be one more package. The parity check judges the result.

TensorRT 10.x does not need this file for fp16 (it builds fp16 from the fp32 graph with its
builder flag); TensorRT 11.x removed that flag and takes its precision from this graph.
"""

from __future__ import annotations

import onnx

from dronseg_edge.errors import BackendUnavailable

# Reductions over a whole feature map (ASPP image pooling, LR-ASPP's scale branch) sum up to
# ~10^4-10^5 activations before dividing: in fp16 the running sum can pass 65504. Keeping them in
# fp32 costs a Cast of one tensor each, not the convolutions' speed.
FP32_OPS = ("GlobalAveragePool", "ReduceMean", "ReduceSum", "Softmax")
FP16_MAX = 65504.0


def _converter():
    try:
        from onnxruntime.transformers import float16
    except ImportError:
        raise BackendUnavailable(
            "fp16 ONNX export needs onnxruntime (its float16 converter): pip install onnxruntime "
            "(or onnxruntime-gpu); on TensorRT 10.x build fp16 engines from the fp32 ONNX instead"
        ) from None
    return float16


def convert_to_fp16(graph: onnx.ModelProto, keep_fp32_ops: tuple[str, ...] = FP32_OPS) -> onnx.ModelProto:
    """An fp16 copy of ``graph``: fp16 weights and activations, float32 input/output, ``keep_fp32_ops`` in fp32."""
    float16 = _converter()
    from onnxruntime.transformers.onnx_model import OnnxModel

    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(keep_fp32_ops))
    converted = float16.convert_float_to_float16(graph, keep_io_types=True, op_block_list=block,
                                                 max_finite_val=FP16_MAX, disable_shape_infer=False)
    # The converter appends its boundary Casts after the nodes that read them; ONNX (and
    # TensorRT's parser) want nodes in topological order.
    wrapper = OnnxModel(converted)
    wrapper.topological_sort()
    return wrapper.model
