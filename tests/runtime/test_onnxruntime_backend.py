"""OnnxRuntimeBackend: CPU runs against PyTorch, shape and provider errors, and (on a GPU) IO binding."""

from __future__ import annotations

import os
import shutil
import sys

import numpy as np
import pytest
import torch

from dronseg_edge.checkpoint import load_checkpoint, model_from_checkpoint
from dronseg_edge.errors import BackendUnavailable, DronsegError
from dronseg_edge.models import SegmentationNet
from testkit import model_input
from dronseg_edge.runtime.onnxruntime import OnnxRuntimeBackend
from dronseg_edge.runtime.registry import load_backend
from testkit import onnx_model, requires_ort_cuda



@pytest.fixture(scope="module")
def exported(tiny_checkpoint, onnx_export):
    """logits and argmax ONNX files of the tiny checkpoint (parity is the export tests' business)."""
    return onnx_export(tiny_checkpoint), onnx_export(tiny_checkpoint, head="argmax")


def frames(n: int = 2) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (n, 64, 96, 3), dtype=np.uint8)


def test_registry_picks_onnxruntime_and_cpu_matches_pytorch(exported, tiny_checkpoint):
    backend = load_backend(exported[0], device="cpu")
    assert isinstance(backend, OnnxRuntimeBackend) and backend.info.input_size == (96, 64)
    x = model_input(frames(1), backend.info, backend.device)
    with backend:
        logits = backend.infer(x)
    assert backend.provider == "CPUExecutionProvider" and backend.cuda_graph is False
    assert logits.dtype == torch.float32 and logits.shape == (1, 12, 64, 96)
    net = SegmentationNet(model_from_checkpoint(load_checkpoint(tiny_checkpoint))).eval()
    with torch.no_grad():
        assert torch.allclose(logits, net(x), atol=1e-4, rtol=1e-4)


def test_argmax_file_returns_uint8_class_map(exported):
    with load_backend(exported[1], device="cpu") as backend:
        mask = backend.infer(model_input(frames(1), backend.info, backend.device))
    assert backend.info.head == "argmax" and mask.dtype == torch.uint8 and mask.shape == (1, 64, 96)
    assert int(mask.max()) < 12


def test_wrong_input_shape_says_how_to_re_export(exported):
    with load_backend(exported[0], device="cpu") as backend:
        with pytest.raises(DronsegError, match="exported for 1x3x64x96 inputs, got 2x3x64x96.*--dynamic"):
            backend.infer(torch.zeros(2, 3, 64, 96))


def test_provider_choices_are_checked(exported):
    """No command has a --provider option: the messages name the Python API's argument (backend_options={"provider": ...})."""
    with pytest.raises(DronsegError, match="^provider='cuda' needs a CUDA device: pass device='cuda', or provider='cpu'"):
        OnnxRuntimeBackend(exported[0], torch.device("cpu"), provider="cuda")
    with pytest.raises(DronsegError, match="^provider 'tpu' is not one of"):
        OnnxRuntimeBackend(exported[0], torch.device("cpu"), provider="tpu")


def test_missing_onnxruntime_is_backend_unavailable_with_the_pip_command(exported, monkeypatch):
    backend = OnnxRuntimeBackend(exported[0], torch.device("cpu"))  # metadata needs only onnx
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailable, match="pip install onnxruntime"):
        backend.activate()


def test_an_onnxruntime_built_for_numpy_1_under_numpy_2_names_the_fix(exported, monkeypatch):
    """onnxruntime 1.17/1.18 (the core's floor on x86-64) fails to import under numpy 2, which pip installs beside
    it: `pip install onnxruntime` was the advice, though it is installed; numpy < 2 (or onnxruntime >= 1.19) fixes it."""
    from dronseg_edge import machine

    backend = OnnxRuntimeBackend(exported[0], torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # its import fails (an empty ImportError, for real)
    versions = {"onnxruntime": "1.17.3", "numpy": "2.4.6"}
    monkeypatch.setattr(machine, "installed_version", versions.get)
    with pytest.raises(BackendUnavailable, match=r"^onnxruntime 1.17.3 was built against numpy 1.x and cannot load under "
                                                 r"numpy 2.4.6: pip install 'numpy<2' \(or 'onnxruntime>=1.19'\)$"):
        backend.activate()
    for versions["onnxruntime"], versions["numpy"] in (("1.19.0", "2.4.6"), ("1.17.3", "1.26.4")):
        with pytest.raises(BackendUnavailable, match="^running .onnx files needs onnxruntime: pip install onnxruntime"):
            backend.activate()


@pytest.mark.gpu
@requires_ort_cuda
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_cuda_provider_with_io_binding_matches_cpu(exported, cuda_graph):
    x = model_input(frames(1), load_backend(exported[0], device="cpu").info, torch.device("cpu"))
    with load_backend(exported[0], device="cpu") as cpu:
        expected = cpu.infer(x)
    with OnnxRuntimeBackend(exported[0], torch.device("cuda"), provider="cuda", cuda_graph=cuda_graph) as gpu:
        first = gpu.infer(x.cuda())
        second = gpu.infer((x * 0.5).cuda())  # a replayed graph must read the new input
    assert gpu.provider.startswith("CUDAExecutionProvider") and gpu.cuda_graph is cuda_graph
    assert first.is_cuda and torch.allclose(first.cpu(), expected, atol=1e-3, rtol=1e-3)
    assert not torch.allclose(first, second)


@pytest.mark.gpu
@requires_ort_cuda
def test_cuda_session_runs_what_it_reports_inside_and_outside_inference_mode(exported):
    x = model_input(frames(1), load_backend(exported[0], device="cpu").info, torch.device("cpu")).cuda()
    with OnnxRuntimeBackend(exported[0], torch.device("cuda"), provider="cuda") as gpu:
        options = gpu.session.get_provider_options()["CUDAExecutionProvider"]
        assert options["device_id"] == "0" and options.get("use_tf32", "0") == "0"  # an fp32 file: strict fp32
        assert (options.get("enable_cuda_graph") == "1") is gpu.cuda_graph
        assert gpu.provider.startswith("CUDAExecutionProvider" + (" + CUDA graph" if gpu.cuda_graph else ""))
        with torch.inference_mode():
            inside = gpu.infer(x)
        outside = gpu.infer(x)  # the graph's fixed buffers were made inside inference mode
    assert torch.equal(inside, outside)


def _with_metadata(source, dest, **fields):
    """A copy of ONNX file ``source`` whose metadata entries ``fields`` are replaced (JSON values), as a hand edit would."""
    import json

    import onnx

    model = onnx.load(str(source))
    for entry in model.metadata_props:
        if entry.key in fields:
            entry.value = json.dumps(fields[entry.key])
    onnx.save(model, str(dest))
    return dest


@pytest.mark.parametrize("fields, says", [
    ({"class_names": ["a", "b", "c"], "palette": [[1, 2, 3]] * 3},
     "its metadata says 3 classes (class_names), but the model output logits has 12 channels"),
    ({"batch": 4}, "its metadata says batch 4 at 96x64 (width x height), but the model takes 1x3x64x96"),
    ({"batch": None}, "its metadata says batch N at 96x64 (width x height), but the model takes 1x3x64x96"),
    ({"input_size": [128, 64]}, "its metadata says batch 1 at 128x64 (width x height), but the model takes 1x3x64x96"),
    ({"dynamic": True, "batch": None}, "its metadata says any batch and size (dynamic), but the model takes fixed 1x3x64x96"),
    ({"io": "frames", "source_size": [96, 64]}, "its metadata says io frames: (N, H, W, 3) uint8 frames, but the model takes float32"),
    ({"head": "argmax"}, "its metadata says head argmax, io tensors: an (N, H, W) class map, but the model outputs 1x12x64x96"),
])
def test_metadata_that_lies_about_the_graph_is_one_line_at_activation(fields, says, exported, tmp_path):
    """Issue 19: 3 class names on a 12-class model ran with black colours; batch/size/io lies gave ONNX
    Runtime's INVALID_ARGUMENT traceback mid-run."""
    lying = _with_metadata(exported[0], tmp_path / "lying.onnx", **fields)
    backend = load_backend(lying, device="cpu")
    with pytest.raises(DronsegError) as info:
        backend.activate()
    message = str(info.value)
    assert message.startswith(f"{lying}: {says}") and "re-export it" in message and "\n" not in message, message


def _external_data(folder, location: str, data_at=None):
    """``folder/sub/m.onnx``, a 12-class model whose weight ``w`` (class 5 wins everywhere) is read from
    ``location``; the weights are written to ``data_at`` (default: where ``location`` leads)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = np.zeros((1, 12, 64, 96), np.float32)
    weight[:, 5] = 10.0
    graph = helper.make_graph([helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1]),
                               helper.make_node("Add", ["mean", "w"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 96])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 12, 64, 96])],
                              [numpy_helper.from_array(weight, "w")])
    stage = folder / "stage"
    stage.mkdir()
    onnx.save_model(onnx_model(graph), str(stage / "m.onnx"),
                    save_as_external_data=True, all_tensors_to_one_file=True, location="w.data", size_threshold=0)
    model = onnx.load(str(stage / "m.onnx"), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    path = folder / "sub" / "m.onnx"
    path.parent.mkdir(exist_ok=True)
    onnx.save(model, str(path))
    data_at = data_at or path.parent / location
    data_at.parent.mkdir(parents=True, exist_ok=True)
    (stage / "w.data").rename(data_at)
    return path


def _absolute(folder):
    return _external_data(folder, str(folder / "w.data"))


def _symlink_out(folder):
    """A symlink in the model's folder that leads out of it: judged by where it leads, as newer onnxruntime builds do."""
    path = _external_data(folder, "link.data", data_at=folder / "elsewhere" / "w.data")
    (folder / "sub" / "link.data").symlink_to(folder / "elsewhere" / "w.data")
    return path


def _missing(folder):
    path = _external_data(folder, "w.data")
    (path.parent / "w.data").unlink()
    return path


@pytest.mark.parametrize("make, location", [
    (lambda folder: _external_data(folder, "../w.data"), "../w.data"),
    (lambda folder: _external_data(folder, "inner/../../w.data"), "inner/../../w.data"),
    (_absolute, "ABSOLUTE"),
    (_symlink_out, "link.data"),
    (_missing, "w.data"),
], ids=["parent", "climbing", "absolute", "symlink", "missing"])
def test_external_data_outside_the_models_folder_or_missing_is_refused_before_onnx_runtime_reads_it(
        make, location, exported, tmp_path):
    """onnxruntime before 1.24 (JetPack's builds) reads data outside: a handed model could read any file the user
    can into its weights (1.23.2 loads all four); and 1.23 says of a missing one only "filesystem error"."""
    path = make(tmp_path)
    location = str(tmp_path / "w.data") if location == "ABSOLUTE" else location
    backend = load_backend(path, device="cpu", meta=exported[0])
    with pytest.raises(DronsegError) as info:
        backend.activate()
    problem = "which is missing" if make is _missing else "outside the model's folder"
    assert str(info.value) == (f"{path} reads its external data (weights) from {location!r}, {problem}: "
                               "keep the .onnx and the .data file written with it in one folder, or re-export it")


def test_external_data_through_a_symlink_loop_is_one_line(exported, tmp_path):
    # Path.resolve raises RuntimeError for a loop before Python 3.13: a traceback (3.13 resolves it: "missing")
    path = _missing(tmp_path)
    (path.parent / "w.data").symlink_to("w.data")
    backend = load_backend(path, device="cpu", meta=exported[0])
    with pytest.raises(DronsegError) as info:
        backend.activate()
    assert str(info.value).startswith(f"{path} ") and "\n" not in str(info.value), str(info.value)


def _hugging_face_cache(folder):
    """snapshots/v/{m.onnx, w.data} as symlinks into blobs/, as huggingface_hub caches a model (here: sub/ -> blobs/)."""
    path = _external_data(folder, "w.data", data_at=folder / "blobs" / "data-blob")
    path.rename(folder / "blobs" / "model-blob")
    path.symlink_to(folder / "blobs" / "model-blob")
    (path.parent / "w.data").symlink_to(folder / "blobs" / "data-blob")
    return path


@pytest.mark.parametrize("make", [lambda folder: _external_data(folder, "w.data"),
                                  lambda folder: _external_data(folder, "inner/../w.data"), _hugging_face_cache],
                         ids=["beside", "climbing-back", "hugging-face-cache"])
def test_external_data_in_the_models_folder_loads_and_is_read(make, exported, tmp_path):
    path = make(tmp_path)
    with load_backend(path, device="cpu", meta=exported[0]) as backend:
        classes = backend.segment(frames(1)).classes
    assert classes.shape == (1, 64, 96) and (classes == 5).all()  # the weights came from the .data file


def _unknown_op(folder):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("FancyOp", ["images"], ["logits"], domain="com.example")], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 96])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 12, 64, 96])])
    path = folder / "m.onnx"
    onnx.save(onnx_model(graph, **{"com.example": 1}), str(path))
    return path


def _newer_ir(folder):
    """As a newer onnx package writes a foreign model, and the ONNX Runtime on a Jetson cannot read."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["images"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 96])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 64, 96])])
    model = onnx_model(graph)
    model.ir_version = 99
    path = folder / "m.onnx"
    onnx.save(model, str(path))
    return path


def _empty(folder):
    path = folder / "m.onnx"
    path.write_bytes(b"")
    return path


def _garbage(folder):
    """A graph whose input list holds bytes that are no protobuf: the external-data walk passes over them."""
    path = folder / "m.onnx"
    path.write_bytes(bytes([7 << 3 | 2, 4, 11 << 3 | 2, 2, 0, 1]))
    return path


def test_bytes_that_are_no_onnx_file_are_refused_before_onnx_runtime_reads_them(exported, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x00\x01not an onnx file" * 10)
    backend = load_backend(path, device="cpu", meta=exported[0])
    with pytest.raises(DronsegError) as info:
        backend.activate()
    assert str(info.value) == f"{path} is not a readable ONNX file (ValueError: field number 0): re-export it"


@pytest.mark.parametrize("make, hint", [
    (_unknown_op, "it uses an operator this onnxruntime does not have"),
    (_newer_ir, "it was written by a newer ONNX (IR version) than this onnxruntime reads: upgrade onnxruntime"),
    (_empty, "it holds no graph (an empty or cut-short file): re-export it"),
    (_garbage, "it is not an ONNX model (damaged, cut short, or another kind of file): re-export it"),
])
def test_a_file_onnx_runtime_cannot_load_is_one_line_without_a_gpu_warning(make, hint, exported, tmp_path, caplog):
    """Files given --meta (so the metadata read passes): the session itself fails. On the CPU there is no GPU
    provider to blame, and the CPU session is no longer retried outside any error handling (a traceback)."""
    path = make(tmp_path)
    backend = load_backend(path, device="cpu", meta=exported[0])
    with caplog.at_level("WARNING"), pytest.raises(DronsegError) as info:
        backend.activate()
    message = str(info.value)
    assert message.startswith("onnxruntime ") and f"cannot load {path} (" in message and f"): {hint}" in message, message
    assert "\n" not in message and info.value.exit_code == 2
    assert not [r for r in caplog.records if "GPU provider" in r.getMessage()]


def test_a_model_whose_name_is_not_utf8_is_refused_by_its_name(exported, tmp_path):
    # onnxruntime said "incompatible constructor arguments": re-export it (the file was fine, its name was not)
    path = tmp_path / os.fsdecode(b"b\xe9st.onnx")  # Latin-1 bytes, as a camera card or an old system names files
    shutil.copy(exported[0], path)
    with pytest.raises(DronsegError, match=r"b\\udce9st.onnx'?: OpenCV, FFmpeg and ONNX Runtime take file names as UTF-8"):
        load_backend(path, device="cpu").activate()

def test_a_float16_input_is_fed_float16(exported, tmp_path):
    """A graph converted with keep_io_types=False takes float16, which activation accepts: the first frame was
    ONNX Runtime's INVALID_ARGUMENT (infer: a traceback)."""
    import onnx
    from onnxruntime.transformers import float16

    path = tmp_path / "half_io.onnx"
    onnx.save(float16.convert_float_to_float16(onnx.load(str(exported[0])), keep_io_types=False), str(path))
    with load_backend(exported[0], device="cpu") as full, load_backend(path, device="cpu") as half:
        x = model_input(frames(1), full.info, full.device)
        assert torch.allclose(half.infer(x).float(), full.infer(x), atol=0.05)


def test_the_output_the_metadata_names_is_run_even_when_another_comes_first(tmp_path):
    """A foreign DeepLabV3 exported with outputs (aux, out) and --meta naming outputs ["out"]: the runner took the
    graph's first output, the auxiliary head's, without a word."""
    import json

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = [np.zeros((1, 12, 64, 96), np.float32) for _ in range(2)]
    weights[0][:, 3], weights[1][:, 5] = 10.0, 10.0
    graph = helper.make_graph([helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1]),
                               helper.make_node("Add", ["mean", "wa"], ["aux"]), helper.make_node("Add", ["mean", "wo"], ["out"])],
                              "g", [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 96])],
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 12, 64, 96]) for name in ("aux", "out")],
                              [numpy_helper.from_array(weights[0], "wa"), numpy_helper.from_array(weights[1], "wo")])
    onnx.save(onnx_model(graph), str(tmp_path / "two.onnx"))
    (tmp_path / "meta.json").write_text(json.dumps({"arch": "deeplabv3_mobilenet_v3_large", "input_size": [96, 64],
                                                    "outputs": ["out"]}))
    backend = load_backend(tmp_path / "two.onnx", device="cpu", meta=tmp_path / "meta.json")
    assert (backend.segment(frames(1)).classes == 5).all()


def test_activate_then_infer_makes_one_session(exported):
    backend = load_backend(exported[0], device="cpu")
    backend.activate()
    session = backend.session
    backend.infer(np.zeros((1, 3, 64, 96), np.float32))
    assert backend.active and backend.session is session
