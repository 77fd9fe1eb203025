"""export/fp16.py: what it repairs in the output of onnxruntime's float16 converter."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from dronseg_edge.export.fp16 import _drop_repeated_casts


def _graph_as_onnxruntime_1_25_to_1_31_converts_it() -> onnx.ModelProto:
    """One fp16 tensor read by two fp32 (blocked) nodes, as those converters write it: a Cast and a value_info
    for each reader, all named ``<tensor>_cast_to_fp32``."""
    cast_back = [helper.make_node("Cast", ["x16"], ["x16_cast_to_fp32"], to=TensorProto.FLOAT,
                                  name="x16_cast_to_fp32_node") for _ in range(2)]
    nodes = [helper.make_node("Cast", ["x"], ["x16"], to=TensorProto.FLOAT16, name="to_fp16"), *cast_back,
             helper.make_node("ReduceMean", ["x16_cast_to_fp32"], ["mean"], axes=[1], keepdims=1, name="mean"),
             helper.make_node("Softmax", ["x16_cast_to_fp32"], ["soft"], axis=1, name="soft")]
    info = helper.make_tensor_value_info("x16_cast_to_fp32", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [1, 1]),
                               helper.make_tensor_value_info("soft", TensorProto.FLOAT, [1, 4])],
                              value_info=[info, info])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)  # every onnxruntime reads 8


def test_the_repeated_casts_of_older_converters_are_dropped_and_the_graph_runs():
    model = _graph_as_onnxruntime_1_25_to_1_31_converts_it()
    with pytest.raises(onnx.checker.ValidationError, match="single static assignment"):
        onnx.checker.check_model(model, full_check=True)

    _drop_repeated_casts(model)

    onnx.checker.check_model(model, full_check=True)
    assert [n.name for n in model.graph.node] == ["to_fp16", "x16_cast_to_fp32_node", "mean", "soft"]
    assert [v.name for v in model.graph.value_info] == ["x16_cast_to_fp32"]
    x = np.array([[0.5, 1.0, 2.0, 4.0]], np.float32)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    mean, soft = session.run(None, {"x": x})
    np.testing.assert_allclose(mean, x.mean(axis=1, keepdims=True))
    np.testing.assert_allclose(soft, np.exp(x) / np.exp(x).sum(axis=1, keepdims=True), rtol=1e-6)
