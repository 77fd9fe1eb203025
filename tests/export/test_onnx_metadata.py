"""Metadata round trips: ONNX metadata_props and the engine's JSON sidecar."""

from __future__ import annotations

import json

import onnx
import pytest
from onnx import TensorProto, helper

from dronseg_edge.errors import DronsegError
from dronseg_edge.export.onnx_metadata import (
    read_engine_sidecar,
    read_onnx_info,
    set_onnx_metadata,
    sidecar_path,
    write_engine_sidecar,
)
from dronseg_edge.metadata import ModelInfo


def identity_model() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 4, 4])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["logits"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def sample_info() -> ModelInfo:
    return ModelInfo(arch="deeplabv3_resnet101", input_size=(1280, 720), precision="fp16", head="argmax", batch=None,
                     dynamic=True, source_sha256="ab" * 32,
                     extra={"exporter": "torchscript (torch 2.x)", "opset": 17, "calibration": {"images": 3}})


def test_onnx_metadata_round_trips_and_keeps_foreign_entries(tmp_path):
    model = identity_model()
    entry = model.metadata_props.add()
    entry.key, entry.value = "author", "someone else"
    info = sample_info()
    set_onnx_metadata(model, info)
    set_onnx_metadata(model, info)  # writing twice must not duplicate keys
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    keys = [p.key for p in onnx.load(str(path)).metadata_props]
    assert len(keys) == len(set(keys)) and "author" in keys and "class_names" in keys
    back = read_onnx_info(path)
    assert back == info
    assert back.input_size == (1280, 720) and back.class_names[11] == "sky" and back.extra["calibration"] == {"images": 3}


def test_onnx_values_are_json_so_other_tools_can_read_them(tmp_path):
    model = set_onnx_metadata(identity_model(), sample_info())
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["input_size"]) == [1280, 720]
    assert json.loads(props["mean"]) == pytest.approx([0.485, 0.456, 0.406])


def test_onnx_without_our_metadata_is_a_clear_error(tmp_path):
    path = tmp_path / "foreign.onnx"
    onnx.save(identity_model(), str(path))
    with pytest.raises(DronsegError, match="no dronseg-edge metadata.*dronseg-edge export"):
        read_onnx_info(path)


def test_corrupt_or_missing_onnx_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(DronsegError, match="bad.onnx is not a readable ONNX file"):
        read_onnx_info(bad)
    with pytest.raises(DronsegError, match="does not exist"):
        read_onnx_info(tmp_path / "missing.onnx")


def test_engine_sidecar_round_trips(tmp_path):
    engine = tmp_path / "m_fp16_h100_sm90_trt10.3.0.engine"
    engine.write_bytes(b"plan")
    info = sample_info()
    info.extra["tensorrt"] = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100", "compute_capability": "9.0"}
    write_engine_sidecar(engine, info)
    assert sidecar_path(engine).name == engine.name + ".json"
    assert read_engine_sidecar(engine) == info


def test_engine_sidecar_missing_or_foreign_says_how_to_rebuild(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(DronsegError, match="no metadata file m.engine.json.*--format engine"):
        read_engine_sidecar(engine)
    sidecar_path(engine).write_text('{"something": 1}')
    with pytest.raises(DronsegError, match="not a dronseg-edge engine metadata file"):
        read_engine_sidecar(engine)
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(DronsegError, match="cannot be read"):
        read_engine_sidecar(engine)
