"""OnnxRuntimeBackend: CPU runs against PyTorch, shape and provider errors, and (on a GPU) IO binding."""

from __future__ import annotations

import importlib.metadata
import sys

import numpy as np
import pytest
import torch
from packaging.version import Version

from dronseg_edge.checkpoint import load_checkpoint, model_from_checkpoint
from dronseg_edge.errors import BackendUnavailable, DronsegError
from dronseg_edge.export import export_artifact
from dronseg_edge.models import SegmentationNet
from testkit import model_input
from dronseg_edge.runtime.onnxruntime import OnnxRuntimeBackend
from dronseg_edge.runtime.registry import load_backend
from testkit import onnx_model, requires_ort_cuda



@pytest.fixture(scope="module")
def exported(tiny_checkpoint, tmp_path_factory):
    """logits and argmax ONNX files of the tiny checkpoint (parity is the export tests' business)."""
    out = tmp_path_factory.mktemp("ort")
    logits = export_artifact(tiny_checkpoint, out_dir=out, device="cpu", parity=False).path
    argmax = export_artifact(tiny_checkpoint, head="argmax", out_dir=out, device="cpu", parity=False).path
    return logits, argmax


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
    with pytest.raises(DronsegError, match="--provider cuda needs a CUDA device"):
        OnnxRuntimeBackend(exported[0], torch.device("cpu"), provider="cuda")
    with pytest.raises(DronsegError, match="--provider 'tpu' is not one of"):
        OnnxRuntimeBackend(exported[0], torch.device("cpu"), provider="tpu")


def test_missing_onnxruntime_is_backend_unavailable_with_the_pip_command(exported, monkeypatch):
    backend = OnnxRuntimeBackend(exported[0], torch.device("cpu"))  # metadata needs only onnx
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(BackendUnavailable, match="pip install onnxruntime"):
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


def _external_data_outside(folder):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((1, 3, 64, 96), np.float32), "w")
    graph = helper.make_graph([helper.make_node("Add", ["images", "w"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 64, 96])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 64, 96])], [weight])
    (folder / "sub").mkdir()
    path = folder / "sub" / "m.onnx"
    onnx.save_model(onnx_model(graph), str(path),
                    save_as_external_data=True, all_tensors_to_one_file=True, location="w.data", size_threshold=0)
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../w.data"  # a path out of the model's folder (ONNX Runtime refuses it)
    (folder / "sub" / "w.data").rename(folder / "w.data")
    onnx.save(model, str(path))
    return path


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
    path = folder / "m.onnx"
    path.write_bytes(b"\x00\x01not an onnx file" * 10)
    return path


@pytest.mark.parametrize("make, hint", [
    pytest.param(_external_data_outside, "its external data (weights) file lies outside the model's folder", marks=pytest.mark.skipif(
        Version(importlib.metadata.version("onnxruntime")) < Version("1.24"),
        reason="onnxruntime < 1.24 (JetPack's builds) reads external data from outside the model's folder")),
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
