"""OnnxRuntimeBackend: CPU runs against PyTorch, shape and provider errors, and (on a GPU) IO binding."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from dronseg_edge.checkpoint import load_checkpoint, model_from_checkpoint
from dronseg_edge.errors import BackendUnavailable, DronsegError
from dronseg_edge.export import export_artifact
from dronseg_edge.models import SegmentationNet
from testkit import model_input
from dronseg_edge.runtime.onnxruntime import OnnxRuntimeBackend
from dronseg_edge.runtime.registry import load_backend
from testkit import requires_ort_cuda



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
    assert backend.last_inference_ms > 0
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
