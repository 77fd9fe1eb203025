"""onnx_wire: the external-data locations of an ONNX file, found off the protobuf wire wherever onnx.proto
lets a tensor stand, without reading the weights."""

from __future__ import annotations

import numpy as np
import pytest

from dronseg_edge import onnx_wire
from testkit import onnx_model

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from onnx.external_data_helper import set_external_data  # noqa: E402


def _external(name: str, location: str) -> "onnx.TensorProto":
    tensor = numpy_helper.from_array(np.ones(4, np.float32), name)
    set_external_data(tensor, location=location, offset=0, length=16)
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    return tensor


def _constant(output: str, location: str) -> "onnx.NodeProto":
    return helper.make_node("Constant", [], [output], value=_external(output, location))


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    size, head = len(payload), b""
    while size >= 0x80:
        head += bytes([size & 0x7F | 0x80])
        size >>= 7
    return bytes([number << 3 | 2]) + head + bytes([size]) + payload


def test_every_place_a_tensor_can_stand_is_searched(tmp_path):
    """Initializers, sparse initializers, a Constant node, the branches of an If (a Constant inside a Loop
    body inside one), and a function's node: the places the onnx package's own loader fills."""
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    loop_body = helper.make_graph([_constant("z", "loop.data")], "body", [], [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])])
    then = helper.make_graph([_constant("y", "then.data")], "then", [], [out])
    other = helper.make_graph([helper.make_node("Loop", ["", ""], ["y"], body=loop_body)], "else", [], [out])
    sparse = helper.make_sparse_tensor(_external("s", "sparse-values.data"), numpy_helper.from_array(np.arange(4, dtype=np.int64), "i"), [8])
    graph = helper.make_graph(
        [_constant("c", "constant.data"), helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)],
        "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])], [out],
        initializer=[_external("w", "weights.data")], sparse_initializer=[sparse])
    model = onnx_model(graph)
    model.functions.append(helper.make_function("local", "f", [], ["k"], [_constant("k", "function.data")], []))
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    assert sorted(onnx_wire.external_data_locations(path)) == sorted(
        ["weights.data", "sparse-values.data", "constant.data", "then.data", "loop.data", "function.data"])


def test_a_model_without_external_data_has_no_locations(tmp_path):
    weight = numpy_helper.from_array(np.ones((64, 64), np.float32), "w")  # its bytes lie inside, in raw_data
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], [weight])
    path = tmp_path / "m.onnx"
    onnx.save(onnx_model(graph), str(path))
    assert list(onnx_wire.external_data_locations(path)) == []


def test_messages_nested_past_protobufs_own_limit_are_refused_without_recursion(tmp_path):
    """Graphs in If nodes in graphs, 5000 deep: refused at MAX_DEPTH, not after a stack of 5000 readers."""
    message = b""
    for _ in range(5000):  # GraphProto.node -> NodeProto.attribute -> AttributeProto.g -> GraphProto ...
        message = _field(1, _field(5, _field(6, message)))
    path = tmp_path / "deep.onnx"
    path.write_bytes(_field(7, message))
    with pytest.raises(ValueError, match=f"nested more than {onnx_wire.MAX_DEPTH} deep"):
        list(onnx_wire.external_data_locations(path))


def test_a_cut_short_file_and_bytes_that_are_no_protobuf_raise(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(_field(7, _field(5, b"\x00" * 40))[:30])  # an initializer cut off
    with pytest.raises(EOFError):
        list(onnx_wire.external_data_locations(path))
    path.write_bytes(b"\x00\x01not an onnx file")
    with pytest.raises(ValueError, match="field number 0"):
        list(onnx_wire.external_data_locations(path))
    for junk, message in ((b"\x0f", "wire type 7"), (b"\xff" * 11, "varint longer than 10 bytes")):
        path.write_bytes(junk + b"\x00" * 16)
        with pytest.raises(ValueError, match=message):
            list(onnx_wire.external_data_locations(path))
    path.write_bytes(_field(7, _field(5, _field(13, b"\x0a" * (onnx_wire.MAX_ENTRY_BYTES + 1)))))
    with pytest.raises(ValueError, match="external_data entry over"):
        list(onnx_wire.external_data_locations(path))
    entry = _field(1, b"location") + _field(2, b"w.data")
    path.write_bytes(_field(7, _field(5, _field(13, entry) * (onnx_wire.MAX_LOCATIONS + 1))))
    with pytest.raises(ValueError, match=f"over {onnx_wire.MAX_LOCATIONS} locations"):
        list(onnx_wire.external_data_locations(path))


def test_a_location_left_on_a_tensor_whose_data_is_inside_is_not_one(tmp_path):
    """ONNX Runtime reads a tensor's external data only when its data_location is EXTERNAL; that field may
    come after the entries (the walk waits for the end of the tensor)."""
    stale = numpy_helper.from_array(np.ones(4, np.float32), "stale")  # its bytes inside, in raw_data
    stale.external_data.add(key="location", value="../left-over.data")
    graph = helper.make_graph([], "g", [], [helper.make_tensor_value_info("stale", TensorProto.FLOAT, [4])],
                              initializer=[stale, _external("w", "weights.data")])
    path = tmp_path / "m.onnx"
    onnx.save(onnx_model(graph), str(path))
    assert list(onnx_wire.external_data_locations(path)) == ["weights.data"]
