"""Self-contained frames graphs (``export --io frames``): uint8 BGR frames in, the uint8 class map out."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

import dronseg_edge.export.tensorrt as trt_export
from dronseg_edge.checkpoint import load_checkpoint, model_from_checkpoint
from dronseg_edge.cli import main
from dronseg_edge.errors import DronsegError
from dronseg_edge.export import ExportOptions, export_artifact
from dronseg_edge.metadata import ModelInfo, read_onnx_info
from dronseg_edge.runtime import tensorrt_env
from dronseg_edge.runtime.host import preprocess_host
from dronseg_edge.runtime.onnxruntime import OnnxRuntimeBackend
from testkit import write_scenes
from trt_parser_rules import check_graph

SOURCE = (288, 192)  # 3x the 96x64 model input: the graph shrinks (INTER_AREA, as constant MatMuls)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "export.md"
DOCS_EXAMPLE = dict(io="frames", dynamic=True, precision="fp16")  # the docs' frames example's file (no parity)


@pytest.fixture(scope="module")
def big_scenes(tmp_path_factory) -> Path:
    """8 scenes rendered at 288x192 (detail the model input cannot hold: a real shrink)."""
    root = tmp_path_factory.mktemp("big")
    write_scenes(root, count=8, frames=0, size=SOURCE)
    return root


@pytest.fixture(scope="module")
def shrink_export(trained_checkpoint, big_scenes, tmp_path_factory):
    return export_artifact(trained_checkpoint, io="frames", source_size=SOURCE, parity_data=big_scenes,
                           parity_images=8, out_dir=tmp_path_factory.mktemp("frames"))


@pytest.fixture(scope="module")
def dynamic_export(trained_checkpoint, big_scenes, tmp_path_factory):
    return export_artifact(trained_checkpoint, io="frames", dynamic=True, confidence=True, parity_data=big_scenes,
                           parity_images=4, out_dir=tmp_path_factory.mktemp("frames_dyn"))


def _io(path: Path):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session, [(i.name, i.type, i.shape) for i in session.get_inputs()], \
        [(o.name, o.type, o.shape) for o in session.get_outputs()]


def test_graph_takes_uint8_nhwc_frames_and_returns_the_class_map_at_their_size(shrink_export):
    assert shrink_export.passed and shrink_export.path.name == "best_frames_src288x192_fp32.onnx"
    _, inputs, outputs = _io(shrink_export.path)
    assert inputs == [("frames", "tensor(uint8)", [1, 192, 288, 3])]
    assert outputs == [("mask", "tensor(uint8)", [1, 192, 288])]
    info = read_onnx_info(shrink_export.path)
    assert (info.io, info.color_order, info.source_size, info.input_size, info.outputs, info.layout, info.head) == \
        ("frames", "BGR", SOURCE, (96, 64), ["mask"], "NHWC", "argmax")
    assert info.extra["opset"] == 17  # the newest TensorRT 8.6 (JetPack 6.0) parses


def test_shrinking_graph_agrees_with_the_checkpoint_and_package_pre_post(shrink_export):
    report = shrink_export.report
    assert report.size == SOURCE and report.images == 8
    assert report.agreement >= 0.99, report.table()


def test_dynamic_graph_agrees_at_any_frame_size(dynamic_export):
    assert dynamic_export.passed and dynamic_export.report.agreement >= 0.99, dynamic_export.report.table()
    assert any("dynamic shapes verified" in note for note in dynamic_export.notes)
    _, inputs, outputs = _io(dynamic_export.path)
    assert inputs == [("frames", "tensor(uint8)", ["batch", "height", "width", 3])]
    assert [o[:2] for o in outputs] == [("mask", "tensor(uint8)"), ("confidence", "tensor(uint8)")]


def test_confidence_is_the_top_probability_and_its_argmax_is_the_class_map(dynamic_export, trained_checkpoint, big_scenes):
    session, _, _ = _io(dynamic_export.path)
    import cv2

    frame = cv2.resize(cv2.imread(str(next((big_scenes / "imgs" / "imgs").iterdir()))), (200, 150),
                       interpolation=cv2.INTER_AREA)
    mask, confidence = session.run(None, {"frames": frame[None]})
    assert mask.shape == confidence.shape == (1, 150, 200) and confidence.dtype == np.uint8
    info = read_onnx_info(dynamic_export.path)
    assert confidence.min() >= 255 // info.num_classes  # a top probability is at least 1 / classes
    model = model_from_checkpoint(load_checkpoint(trained_checkpoint)).eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(preprocess_host([frame], info)))["out"]
        probs = torch.softmax(F.interpolate(logits, size=(150, 200), mode="bilinear", align_corners=False), dim=1)
    top, classes = probs.max(dim=1)
    assert (classes.numpy().astype(np.uint8) == mask).mean() >= 0.99
    close = np.abs(top.numpy() * 255 - confidence.astype(np.float64)) <= 2
    assert close.mean() >= 0.99


def test_fp16_frames_graph_passes_parity(trained_checkpoint, big_scenes, tmp_path):
    result = export_artifact(trained_checkpoint, io="frames", source_size=SOURCE, precision="fp16",
                             parity_data=big_scenes, parity_images=4, out_dir=tmp_path)
    assert result.passed and result.report.agreement >= 0.995, result.report.table()
    _, inputs, outputs = _io(result.path)
    assert inputs[0][1] == "tensor(uint8)" and outputs[0][1] == "tensor(uint8)"


def test_a_frames_graph_at_another_input_size_is_compared_at_that_size(trained_checkpoint, big_scenes, tmp_path):
    # export --size WxH other than the training size: the reference runs the checkpoint at WxH too, as the
    # graph does (it ran at its training size, a different computation: 81 % on a correct file)
    result = export_artifact(trained_checkpoint, io="frames", source_size=SOURCE, size=(144, 96),
                             parity_data=big_scenes, parity_images=4, out_dir=tmp_path)
    assert read_onnx_info(result.path).input_size == (144, 96)
    assert result.passed and result.report.agreement >= 0.99, result.report.table()


def test_fp16_dynamic_frames_graph_resizes_in_fp32(tiny_checkpoint, onnx_export):
    """fp16 holds integers exactly only up to 2048: the resize (pixel positions, weights, sums) stays fp32."""
    import onnx

    made = onnx_export(tiny_checkpoint, **DOCS_EXAMPLE)  # the graph's types do not depend on the weights
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(made))).graph
    types = {v.name: v.type.tensor_type.elem_type for v in graph.value_info}
    resize = [n for n in graph.node if n.name.startswith("/resize/")]
    assert {"MatMul", "Range", "Where"} <= {n.op_type for n in resize}
    assert {types[n.output[0]] for n in resize if n.op_type in ("MatMul", "Where", "Div")} == {onnx.TensorProto.FLOAT}
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert {types[n.output[0]] for n in convs} == {onnx.TensorProto.FLOAT16}  # the model itself is fp16
    assert check_graph(onnx.load(str(made))) == []  # the docs example's file: TensorRT's parser table holds


def test_onnxruntime_backend_runs_frames_and_refuses_tensors(shrink_export):
    backend = OnnxRuntimeBackend(shrink_export.path, torch.device("cpu"))
    frames = torch.zeros(1, 192, 288, 3, dtype=torch.uint8)
    out = backend.infer(frames)
    assert out.shape == (1, 192, 288) and out.dtype == torch.uint8
    with pytest.raises(DronsegError, match=r"\(N, H, W, 3\) uint8 BGR frames"):
        backend.infer(torch.zeros(1, 3, 64, 96))
    with pytest.raises(DronsegError, match="--source-size"):
        backend.infer(torch.zeros(1, 64, 96, 3, dtype=torch.uint8))


def test_cli_writes_a_frames_file_and_prints_pass(tiny_checkpoint, big_scenes, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tiny_checkpoint), "--io", "frames", "--source-size", "192x128", "--confidence",
              "--parity-data", str(big_scenes), "--parity-images", "2", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert exit_info.value.code in (0, None), err
    assert "PASS" in out and "uint8 BGR frames (192x128)" in out
    assert (tmp_path / "tiny_frames_src192x128_conf_fp32.onnx").is_file()


@pytest.mark.parametrize("changes, message", [
    ({"source_size": (320, 240)}, "--source-size needs --io frames"),
    ({"confidence": True}, "--confidence needs --io frames"),
    ({"io": "pixels"}, "--io 'pixels' is not one of tensors, frames"),
    ({"io": "frames", "source_size": (320, 240), "dynamic": True}, "pass one of them"),
    ({"io": "frames", "head": "argmax"}, "drop --head"),
    ({"io": "frames", "source_size": (0, 240)}, "--source-size '0x240' is out of range"),
])
def test_bad_combinations_are_one_line_errors(changes, message):
    with pytest.raises(DronsegError, match=re.escape(message)) as info:
        ExportOptions(**changes)
    assert "\n" not in str(info.value)


def test_docs_example_segments_a_jpeg_with_a_tiny_exported_file(tiny_checkpoint, onnx_export, tmp_path, monkeypatch):
    import cv2

    text = DOCS.read_text(encoding="utf-8")
    code = re.search(r"<!-- frames-example -->\s*```python\n(.*?)```", text, re.S).group(1)
    model_name = re.search(r'InferenceSession\("([^"]+)"\)', code).group(1)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(onnx_export(tiny_checkpoint, **DOCS_EXAMPLE), work / model_name)
    frame = np.full((150, 200, 3), (40, 120, 60), np.uint8)
    frame[:50] = (235, 170, 110)
    cv2.imwrite(str(work / "frame.jpg"), frame)
    monkeypatch.chdir(work)
    exec(compile(code, str(DOCS), "exec"), {"__name__": "docs_example"})
    mask = cv2.imread(str(work / "mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (150, 200) and mask.dtype == np.uint8 and mask.max() < 12


def test_dynamic_frames_engine_gets_an_nhwc_profile(monkeypatch):
    info = ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64), head="argmax", batch=None, dynamic=True,
                     io="frames", layout="NHWC", color_order="BGR", outputs=["mask"])
    shapes = trt_export.dynamic_profile(info, 2)
    assert shapes == {"min": [1, 64, 64, 3], "opt": [2, 64, 96, 3], "max": [4, 1080, 1920, 3]}


def test_a_graph_that_froze_its_free_batch_is_refused(tiny_checkpoint, tmp_path, monkeypatch):
    """A dynamic-batch frames graph (the file of ``--format triton``) is run at batch 2 before it is kept: a
    graph traced with batch 1 baked in fails there with one line, and no file takes the final name."""
    from dronseg_edge.export import embedded

    real = embedded.export_frames_onnx
    monkeypatch.setattr(embedded, "export_frames_onnx",
                        lambda model, path, info, **kw: real(model, path, dataclasses.replace(info, batch=1), **kw))
    with pytest.raises(DronsegError, match=re.escape("dynamic-batch --io frames export fails at 2x120x160x3 (")) as info:
        export_artifact(tiny_checkpoint, io="frames", source_size=(160, 120), dynamic_batch=True, parity=False,
                        device="cpu", out_dir=tmp_path)
    assert str(info.value).endswith("export --format onnx with a fixed --batch") and "\n" not in str(info.value)
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == []


def test_a_frames_export_on_a_torch_without_the_torchscript_exporter_says_so(monkeypatch, tmp_path):
    from dronseg_edge.errors import DronsegError
    from dronseg_edge.export import embedded

    monkeypatch.setattr(embedded.onnx_export, "choose_exporter", lambda: "dynamo")
    with pytest.raises(DronsegError, match="--io frames needs torch's TorchScript ONNX exporter, which torch .* no longer"):
        embedded.export_frames_onnx(None, tmp_path / "frames.onnx", None)
