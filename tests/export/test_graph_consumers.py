"""Every exported graph against the consumers it is for: TensorRT's ONNX parser and OpenCV's DNN (4.x and 5.x).

No TensorRT can be installed here, so each variant (tensors, frames static and dynamic, argmax head,
fp16, int8) is checked against the parser's restrictions as onnx-tensorrt's source states them
(trt_parser_rules.py names the versions); hand-made graphs prove the check can fail. OpenCV DNN is run
for real: the pinned opencv-python-headless 4.x wheels below, each in a side venv (made once per session
from the package registry; skipped when it is unreachable), and this environment's OpenCV 5, fed the
same frames as ONNX Runtime.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from testkit import side_env, side_venv
from trt_parser_rules import check_graph

from dronseg_edge.metadata import read_onnx_info
from dronseg_edge.runtime.host import preprocess_host, resize_frame

FRAME = (160, 120)  # (W, H): 5/3 and 15/8 of the 96x64 model input, the non-integer shrink of real cameras
VARIANTS = {
    "tensors": {}, "tensors_dynamic": {"dynamic": True}, "argmax_head": {"head": "argmax"},
    "fp16": {"precision": "fp16"}, "int8": {"precision": "int8"},
    "frames_static": {"io": "frames", "source_size": FRAME, "confidence": True},
    "frames_dynamic": {"io": "frames", "dynamic": True, "confidence": True},
    "frames_fp16": {"io": "frames", "source_size": FRAME, "precision": "fp16"},
    "frames_int8": {"io": "frames", "source_size": FRAME, "precision": "int8"},
    "frames_int8_conf": {"io": "frames", "source_size": FRAME, "precision": "int8", "confidence": True},
}
# OpenCV 5 takes the confidence's MaxPool of an int8 graph for an int8 layer, which refuses its float input
# (pool2_int8_layer.cpp: "inptype == CV_8SC1 || inptype == CV_8UC1"; 5.0.0 and 5.1.0); 4.14.0 runs it, 4.8.1 untried.
OPENCV5_REFUSES = {"frames_int8_conf"}
# JetPack 6's OpenCV line (4.8) and the newest 4.x; 4.8's wheels were built against numpy 1.x.
OPENCV4 = {"4.8.1.78": ["opencv-python-headless==4.8.1.78", "numpy==1.26.4"],
           "4.14.0.94": ["opencv-python-headless==4.14.0.94"]}
MIN_AGREEMENT = {"fp32": 0.999, "fp16": 0.995, "int8": 0.98}  # parity's default rules (docs/export.md)


@pytest.fixture(scope="module")
def graphs(trained_checkpoint, scenes, onnx_export) -> dict[str, Path]:
    """Every variant of the suite's trained model, exported without parity (the export tests judge that)."""
    calibration = dict(calib_data=scenes, calib_images=4)
    return {name: onnx_export(trained_checkpoint, **changes, **(calibration if changes.get("precision") == "int8" else {}))
            for name, changes in VARIANTS.items()}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_exported_graph_passes_tensorrts_parser_table(graphs, variant):
    assert check_graph(onnx.load(str(graphs[variant]))) == []


def _model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _tensor(name, dtype, shape):
    return helper.make_tensor_value_info(name, dtype, shape)


def test_the_table_flags_an_antialiased_resize_and_opset_18_for_tensorrt_86():
    sizes = helper.make_tensor("sizes", TensorProto.INT64, [4], [1, 3, 8, 8])
    resize = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear", antialias=1)
    problems = check_graph(_model([resize], [_tensor("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                                  [_tensor("y", TensorProto.FLOAT, [1, 3, 8, 8])], [sizes], opset=18))
    assert "10: Resize (Resize): Antialiasing is not supported" in problems
    assert "8.6: opset 18 is outside 7..17" in problems


def test_the_table_flags_uint8_inside_the_graph_and_casts_from_integers_to_uint8():
    """The old frames graph's start (Transpose and a reversed Slice on the uint8 frames) and ArgMax -> uint8."""
    consts = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in
              (("start", -1), ("end", -4), ("axis", 1), ("step", -1))]
    nodes = [helper.make_node("Transpose", ["frames"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("Slice", ["nchw", "start", "end", "axis", "step"], ["rgb"]),
             helper.make_node("Cast", ["rgb"], ["x"], to=TensorProto.FLOAT),
             helper.make_node("ArgMax", ["x"], ["classes"], axis=1, keepdims=0),
             helper.make_node("Cast", ["classes"], ["mask"], to=TensorProto.UINT8)]
    problems = check_graph(_model(nodes, [_tensor("frames", TensorProto.UINT8, [1, 4, 4, 3])],
                                  [_tensor("mask", TensorProto.UINT8, [1, 4, 4])], consts), versions=("10",))
    assert any("UINT8 tensor 'nchw' is not a graph output" in p for p in problems)
    assert any("Transpose (Transpose) reads a UINT8 network input" in p for p in problems)
    assert any("uint8 converts only to and from float32/float16, not INT64 -> UINT8" in p for p in problems)


def test_the_table_flags_non_constant_axes_zero_points_and_unknown_ops():
    nodes = [helper.make_node("Unsqueeze", ["x", "axes"], ["u"]),
             helper.make_node("QuantizeLinear", ["u", "scale", "zero"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["d"]),
             helper.make_node("Einsum", ["d"], ["y"], equation="ij->ji")]
    inits = [helper.make_tensor("scale", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("zero", TensorProto.INT8, [], [3])]
    problems = check_graph(_model(nodes, [_tensor("x", TensorProto.FLOAT, [2]), _tensor("axes", TensorProto.INT64, [1])],
                                  [_tensor("y", TensorProto.FLOAT, [1, 2])], inits), versions=("10",))
    assert any("Unsqueeze" in p and "`axes` must be an initializer" in p for p in problems)
    assert sum("the zero point must be zero" in p for p in problems) == 2
    assert any("Einsum is not in the operator table" in p for p in problems)


OPENCV_RUNNER = textwrap.dedent('''
    import json, sys
    import cv2, numpy as np
    jobs, results = json.loads(sys.argv[1]), {"version": cv2.__version__, "errors": {}}
    for name, job in jobs.items():
        try:
            net = cv2.dnn.readNetFromONNX(job["graph"])
            outputs = []
            for sample in np.load(job["feed"]):
                net.setInput(sample[None], job["input"])
                outputs.append(np.stack([o[0] for o in net.forward(job["outputs"])]))
            np.save(job["out"], np.stack(outputs))  # (samples, outputs, ...)
        except cv2.error as exc:
            results["errors"][name] = " ".join(str(exc).split())[-400:]
    print(json.dumps(results))
''')


@pytest.fixture(scope="session", params=[*OPENCV4, "installed"])
def opencv_python(request, tmp_path_factory) -> Path:
    """A python with one OpenCV: a pinned 4.x in a side venv made once per session (about 5 s from pip's cache,
    200 MB), or this environment's own (5.x)."""
    if request.param == "installed":
        return Path(sys.executable)
    return side_venv(tmp_path_factory.mktemp(f"opencv-{request.param}"), OPENCV4[request.param])


def _io(name: str) -> tuple[str, list[str]]:
    """(input, outputs) of a variant's graph."""
    if name.startswith("frames"):
        return "frames", ["mask", "confidence"] if VARIANTS[name].get("confidence") else ["mask"]
    return "images", ["mask"] if name == "argmax_head" else ["logits"]


def _feeds(graphs, scenes, folder: Path) -> dict[str, Path]:
    """Four real frames per variant, as its graph takes them: uint8 BGR at FRAME, or normalised NCHW at the model size."""
    images = sorted((scenes / "imgs" / "imgs").glob("*.jpg"))[-4:]  # the pipeline-like frames: several classes
    frames = np.stack([resize_frame(cv2.imread(str(p)), *FRAME) for p in images])
    np.save(folder / "frames.npy", frames)
    np.save(folder / "images.npy", preprocess_host(list(frames), read_onnx_info(graphs["tensors"])))
    return {name: folder / f"{_io(name)[0]}.npy" for name in VARIANTS}


@pytest.mark.slow
def test_opencv_dnn_runs_every_variant_it_can_as_onnxruntime_does(opencv_python, graphs, scenes, tmp_path):
    feeds = _feeds(graphs, scenes, tmp_path)
    jobs = {name: {"graph": str(path), "feed": str(feeds[name]), "input": _io(name)[0], "outputs": _io(name)[1],
                   "out": str(tmp_path / f"{name}.out.npy")} for name, path in graphs.items()}
    (tmp_path / "run_opencv.py").write_text(OPENCV_RUNNER)
    env = None if opencv_python == Path(sys.executable) else side_env()  # a side venv's numpy, not a PYTHONPATH's
    done = subprocess.run([str(opencv_python), str(tmp_path / "run_opencv.py"), json.dumps(jobs)], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    # OpenCV 4 has no dynamic shapes (its importer refuses Shape of a dynamic input): docs/export.md says so.
    opencv4 = results["version"].startswith("4.")
    refused = {n for n in VARIANTS if VARIANTS[n].get("dynamic")} if opencv4 else OPENCV5_REFUSES
    untried = OPENCV5_REFUSES if opencv4 else set()  # docs/export.md: "-"
    assert set(results["errors"]) - untried == refused, results["errors"]
    for name in set(VARIANTS) - refused - untried:
        input_name, outputs = _io(name)
        session = ort.InferenceSession(str(graphs[name]), providers=["CPUExecutionProvider"])
        feed = np.load(feeds[name])
        expected = np.stack([np.stack([o[0] for o in session.run(outputs, {input_name: x[None]})]) for x in feed])
        got = np.load(jobs[name]["out"])
        assert got.shape == expected.shape, name
        classes = [m[:, 0].argmax(axis=1) if outputs == ["logits"] else m[:, 0].astype(np.uint8) for m in (got, expected)]
        assert len(np.unique(classes[1])) > 1  # a real segmentation, not one class everywhere
        agreement = float((classes[0] == classes[1]).mean())
        precision = VARIANTS[name].get("precision", "fp32")
        assert agreement >= MIN_AGREEMENT[precision], f"{name}: OpenCV {results['version']} agrees on {agreement:.4%}"
        if "confidence" in outputs:  # softmax maximum x 255: the same to a grey level
            assert (np.abs(got[:, 1] - expected[:, 1].astype(np.float32)) <= 1).mean() >= 0.999, name
