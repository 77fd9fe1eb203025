"""Metadata round trips: ONNX metadata_props (and the wire-format reader that reads them without onnx)
and the engine's JSON sidecar."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import dronseg_edge.metadata as metadata_module
from dronseg_edge.errors import DronsegError
from dronseg_edge.metadata import (
    _decode_props,
    ModelInfo,
    read_engine_sidecar,
    read_onnx_info,
    read_onnx_metadata_props,
    set_onnx_metadata,
    sidecar_path,
    write_engine_sidecar,
)


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
    model = identity_model()  # another tool's entries of the same names, without our marker: still foreign
    onnx.helper.set_model_props(model, {"arch": '"lraspp_mobilenet_v3_large"', "input_size": "[96, 64]"})
    onnx.save(model, str(path))
    with pytest.raises(DronsegError, match=r"no dronseg-edge metadata \(class names, input size, normalisation\)"):
        read_onnx_info(path)


def test_corrupt_or_missing_onnx_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(DronsegError, match="bad.onnx is not a readable ONNX file"):
        read_onnx_info(bad)
    with pytest.raises(DronsegError, match="does not exist"):
        read_onnx_info(tmp_path / "missing.onnx")
    (tmp_path / "model.onnx").mkdir()
    with pytest.raises(DronsegError, match="model.onnx is a folder, not a file"):
        read_onnx_info(tmp_path / "model.onnx")


@pytest.fixture(scope="module")
def exported(tiny_checkpoint, onnx_export):
    """Real exports of the tiny checkpoint: fp32 logits and a dynamic argmax file (no parity: not this module's business)."""
    return onnx_export(tiny_checkpoint), onnx_export(tiny_checkpoint, head="argmax", dynamic=True)


def onnx_props(path) -> list[tuple[str, str]]:
    return [(p.key, p.value) for p in onnx.load(str(path), load_external_data=False).metadata_props]


def test_wire_reader_agrees_with_onnx_on_exported_files(exported):
    for path in exported:
        props = read_onnx_metadata_props(path)
        assert props == onnx_props(path) and ("dronseg_edge", "1") in props
        assert read_onnx_info(path) == ModelInfo.from_dict(_decode_props(onnx_props(path), str(path)), source=str(path))
    assert read_onnx_info(exported[1]).head == "argmax" and read_onnx_info(exported[1]).dynamic


def test_wire_reader_takes_fields_in_any_order_and_any_text(tmp_path):
    """Entries before the graph (protobuf allows any field order) and non-ASCII text read as onnx reads them."""
    info = sample_info()
    info.class_names = [f"classe {i} é→" for i in range(12)]
    first = onnx.ModelProto()
    entry = first.metadata_props.add()
    entry.key, entry.value = "note", "écrit avant le graphe"
    path = tmp_path / "reordered.onnx"
    path.write_bytes(first.SerializeToString() + set_onnx_metadata(identity_model(), info).SerializeToString())
    assert read_onnx_metadata_props(path) == onnx_props(path) and read_onnx_metadata_props(path)[0][0] == "note"
    assert read_onnx_info(path).class_names[3] == "classe 3 é→"


def test_wire_reader_reads_a_file_with_external_data_without_that_data(tmp_path):
    weights = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(1, 4096), "w")
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 4096])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4096])
    graph = helper.make_graph([helper.make_node("Add", ["images", "w"], ["logits"])], "g", [x], [y], initializer=[weights])
    model = set_onnx_metadata(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), sample_info())
    path = tmp_path / "external.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="external.data",
                    size_threshold=0)
    assert (tmp_path / "external.data").stat().st_size >= 4096 * 4  # the weights really live outside
    (tmp_path / "external.data").unlink()  # metadata needs only the .onnx file
    assert read_onnx_metadata_props(path) == onnx_props(path)
    assert read_onnx_info(path) == sample_info()


def test_wire_reader_skips_the_graph_without_reading_it(tmp_path, monkeypatch):
    """A (sparse) 200 MB graph field costs one seek: only a few hundred bytes are read."""
    graph_size = 200 << 20
    path = tmp_path / "big.onnx"
    with open(path, "wb") as handle:
        handle.write(bytes([7 << 3 | 2]) + _varint(graph_size))  # ModelProto.graph, length-delimited
        handle.seek(graph_size, 1)  # a hole: no disk space, reads as zeros
        handle.write(set_onnx_metadata(onnx.ModelProto(), sample_info()).SerializeToString())
    read = []

    class Counting:
        def __init__(self, handle):
            self.handle = handle

        def read(self, size=-1):
            data = self.handle.read(size)
            read.append(len(data))
            return data

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(metadata_module, "open", lambda *args, **kwargs: Counting(open(*args, **kwargs)), raising=False)
    assert read_onnx_info(path) == sample_info()
    assert 0 < sum(read) < 4096


@pytest.mark.parametrize("cut", ["graph", "metadata", "varint"])
def test_truncated_onnx_is_the_one_line_error(exported, tmp_path, cut):
    data = exported[0].read_bytes()
    # The graph is most of the file and the metadata its last field; 0x08 0xFF: ir_version's varint never ends.
    truncated = {"graph": data[: len(data) // 2], "metadata": data[:-5], "varint": bytes([0x08, 0xFF])}[cut]
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(truncated)
    with pytest.raises(DronsegError) as info:
        read_onnx_info(bad)
    message = str(info.value)
    assert "cut.onnx is not a readable ONNX file" in message and "re-export it" in message and "\n" not in message


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


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
    with pytest.raises(DronsegError, match="m.engine.json: metadata is not valid JSON .*--format engine"):
        read_engine_sidecar(engine)


def test_output_stride_round_trips_and_files_without_it_read_as_built(tmp_path):
    info = sample_info()
    assert info.output_stride == 8  # None becomes the arch's default: ResNets 8
    info.output_stride = 16
    path = tmp_path / "os16.onnx"
    onnx.save(set_onnx_metadata(identity_model(), info), str(path))
    assert read_onnx_info(path).output_stride == 16
    for arch, expected in (("deeplabv3_resnet101", 8), ("deeplabv3_mobilenet_v3_large", 16), ("lraspp_mobilenet_v3_large", 16)):
        old = set_onnx_metadata(identity_model(), ModelInfo(arch=arch, input_size=(96, 64)))
        kept = [(p.key, p.value) for p in old.metadata_props if p.key != "output_stride"]  # as written before the field
        del old.metadata_props[:]
        for key, value in kept:
            entry = old.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(old, str(tmp_path / f"{arch}.onnx"))
        assert read_onnx_info(tmp_path / f"{arch}.onnx").output_stride == expected, arch
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    write_engine_sidecar(engine, info)
    assert read_engine_sidecar(engine).output_stride == 16
    bad = json.loads(sidecar_path(engine).read_text())
    bad["output_stride"] = 32
    sidecar_path(engine).write_text(json.dumps(bad))
    with pytest.raises(DronsegError, match="output_stride 32 is not one of 8, 16"):
        read_engine_sidecar(engine)


def test_checkpoint_metadata_takes_the_stride_or_the_arch_default():
    ckpt = {"arch": "deeplabv3_resnet50", "input_size": [96, 64], "class_names": list(sample_info().class_names)}
    assert ModelInfo.from_checkpoint(ckpt, with_hash=False).output_stride == 8  # a checkpoint older than the field
    assert ModelInfo.from_checkpoint({**ckpt, "output_stride": 16}, with_hash=False).output_stride == 16


def test_graph_and_metadata_describe_the_contract_in_plain_words():
    info = ModelInfo(arch="deeplabv3_resnet50", input_size=(96, 64), output_stride=16)
    model = set_onnx_metadata(identity_model(), info)
    props = {p.key: json.loads(p.value) for p in model.metadata_props}
    text_in, text_out = props["input_description"], props["output_description"]
    for phrase in ("float32", "1 x 3 x H x W (NCHW)", "H x W = 64 x 96", "[width, height] = [96, 64]", "RGB order",
                   "(x / 255 - mean[c]) / std[c]", "mean [0.485, 0.456, 0.406]"):
        assert phrase in text_in, phrase
    for phrase in ("raw logits (no softmax)", "1 x 12 x H x W", "class_names[i]"):
        assert phrase in text_out, phrase
    graph = model.graph
    assert graph.input[0].doc_string == text_in and graph.output[0].doc_string == text_out
    assert model.doc_string == graph.doc_string and "output stride 16" in graph.doc_string and "RGB float NCHW in" in graph.doc_string
    assert props["color_order"] == "RGB" and props["layout"] == "NCHW" and props["input_size"] == [96, 64]
    frames = ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64), head="argmax", io="frames", layout="NHWC",
                       color_order="BGR", source_size=(192, 128), outputs=["mask", "confidence"])
    x = helper.make_tensor_value_info("frames", TensorProto.UINT8, [1, 128, 192, 3])
    outs = [helper.make_tensor_value_info(n, TensorProto.UINT8, [1, 128, 192]) for n in ("mask", "confidence")]
    nodes = [helper.make_node("ReduceMax", ["frames"], [n], axes=[3], keepdims=0) for n in ("mask", "confidence")]
    frames_model = set_onnx_metadata(helper.make_model(helper.make_graph(nodes, "f", [x], outs)), frames)
    inputs_doc, mask_doc, conf_doc = (v.doc_string for v in (*frames_model.graph.input, *frames_model.graph.output))
    assert "uint8" in inputs_doc and "x H x W x 3 (NHWC)" in inputs_doc and "BGR order" in inputs_doc
    assert "divides by 255" in inputs_doc and "H x W = 128 x 192" in inputs_doc
    assert mask_doc.startswith("mask: uint8 class map") and "class_names" in mask_doc and "softmax probability" in conf_doc
    assert "uint8 BGR frames in, uint8 class map out" in frames_model.graph.doc_string


def test_foreign_plain_text_entries_become_json_strings():
    model = identity_model()
    for key, value in (("onnx.infer", "onnxruntime.quant"), ("count", "3"), ("note", '"already json"')):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    props = {p.key: p.value for p in set_onnx_metadata(model, sample_info()).metadata_props}
    assert json.loads(props["onnx.infer"]) == "onnxruntime.quant"  # was plain text: now a JSON string
    assert props["count"] == "3" and props["note"] == '"already json"'  # JSON already: untouched


@pytest.fixture(scope="module")
def every_kind(tiny_checkpoint, synth_root, onnx_export):
    """fp32, fp16 and int8 tensors files and an fp32 frames file of the tiny checkpoint (no parity)."""
    return {
        "fp32": onnx_export(tiny_checkpoint),
        "fp16": onnx_export(tiny_checkpoint, precision="fp16"),
        "int8": onnx_export(tiny_checkpoint, precision="int8", calib_data=synth_root, calib_images=4),
        "frames": onnx_export(tiny_checkpoint, io="frames"),
    }


@pytest.mark.parametrize("kind", ["fp32", "fp16", "int8", "frames"])
def test_every_metadata_value_of_every_kind_of_file_is_json(every_kind, kind):
    props = onnx_props(every_kind[kind])
    decoded = {}
    for key, value in props:
        try:
            decoded[key] = json.loads(value)
        except ValueError:
            pytest.fail(f"{kind} file: metadata entry {key!r} = {value!r} is not JSON")
    assert decoded["precision"] == ("fp32" if kind == "frames" else kind) and decoded["output_stride"] == 16
    if kind == "int8":
        assert decoded["onnx.quant.pre_process"] == "onnxruntime.quant"  # the quantiser's marker, kept as JSON
    graph = onnx.load(str(every_kind[kind]), load_external_data=False).graph
    assert graph.doc_string and graph.input[0].doc_string == decoded["input_description"]
    assert ("BGR order" if kind == "frames" else "RGB order") in decoded["input_description"]


def test_metadata_props_larger_than_the_bound_are_refused_before_they_are_read(tmp_path, monkeypatch):
    """A crafted file whose metadata_props claim 5 MiB: one line, and the payload is never read into memory."""
    size = metadata_module.MAX_PROPS_BYTES + (1 << 20)
    bad = tmp_path / "big.onnx"
    bad.write_bytes(bytes([0x72]) + _varint(size) + b"\0" * size)  # field 14 (metadata_props), length-delimited
    real_open = open
    reads = []

    class Counting:
        def __init__(self, handle):
            self._handle = handle

        def read(self, n=-1):
            reads.append(n)
            return self._handle.read(n)

        def __getattr__(self, name):
            return getattr(self._handle, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._handle.close()

    monkeypatch.setattr(metadata_module, "open", lambda *a, **k: Counting(real_open(*a, **k)), raising=False)
    with pytest.raises(DronsegError) as info:
        read_onnx_info(bad)
    message = str(info.value)
    assert message.startswith(f"{bad}: metadata_props hold more than {metadata_module.MAX_PROPS_BYTES} bytes") and "\n" not in message
    assert max(reads) < 4096  # the varints only


def test_more_metadata_entries_than_the_bound_and_json_of_no_fields_are_one_line(tmp_path):
    bad = tmp_path / "many.onnx"
    bad.write_bytes(b"\x72\x06\x0a\x01k\x12\x01v" * (metadata_module.MAX_PROPS + 1))  # field 14 entries k=v
    with pytest.raises(DronsegError, match=f"many.onnx: metadata_props hold more than {metadata_module.MAX_PROPS} entries"):
        read_onnx_info(bad)
    with pytest.raises(DronsegError, match=r"^m.json cannot be read \(Is a directory\): FIX$"):
        metadata_module.read_info_json(tmp_path, "m.json", "FIX")
    with pytest.raises(DronsegError, match="^m.json: metadata is list, not an object of fields: FIX$"):
        ModelInfo.from_dict([], source="m.json", fix="FIX")
    with pytest.raises(DronsegError, match=r"^m.json has no dronseg-edge metadata \(arch, input_size missing\): FIX$"):
        ModelInfo.from_dict({"precision": "fp16"}, source="m.json", fix="FIX")
