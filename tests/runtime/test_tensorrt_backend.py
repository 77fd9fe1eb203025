"""TensorRTBackend: metadata from the sidecar, refusal of foreign engines, and a real run where TensorRT exists."""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

import dronseg_edge.runtime.tensorrt as trt_runtime
from dronseg_edge.errors import BackendUnavailable, DronsegError
from dronseg_edge.export.onnx_metadata import write_engine_sidecar
from dronseg_edge.metadata import ModelInfo
from dronseg_edge.runtime.registry import load_backend

BUILT = {"tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
MISSING = [what for what, ok in (("TensorRT (`import tensorrt` fails)", importlib.util.find_spec("tensorrt") is not None),
                                  ("a CUDA GPU (none visible to torch)", torch.cuda.is_available())) if not ok]


@pytest.fixture
def engine_file(tmp_path):
    path = tmp_path / "best_fp16_h100-80gb-hbm3_sm90_trt10.3.0.engine"
    path.write_bytes(b"plan bytes")
    info = ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64), precision="fp16",
                     extra={"tensorrt": dict(BUILT), "source_checkpoint": "/runs/a/weights/best.pt"})
    write_engine_sidecar(path, info)
    return path


def test_registry_reads_engine_metadata_without_tensorrt(engine_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    backend = load_backend(engine_file, device="cpu")
    assert isinstance(backend, trt_runtime.TensorRTBackend)
    assert backend.info.precision == "fp16" and backend.info.input_size == (96, 64)
    with pytest.raises(BackendUnavailable, match="pip install tensorrt.*JetPack.*--system-site-packages"):
        backend.activate()


def test_engine_without_sidecar_is_refused_with_rebuild_hint(tmp_path):
    path = tmp_path / "x.engine"
    path.write_bytes(b"plan")
    with pytest.raises(DronsegError, match="no metadata file x.engine.json"):
        load_backend(path, device="cpu")


@pytest.mark.parametrize("here, words", [
    ({"tensorrt_version": "11.4.0.106", "gpu_name": BUILT["gpu_name"], "compute_capability": "9.0"}, "TensorRT 11.4.0.106"),
    ({"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"}, "Orin (sm87)"),
])
def test_engine_from_another_gpu_or_version_is_refused(engine_file, monkeypatch, here, words):
    fake = types.ModuleType("tensorrt")
    fake.__version__ = here["tensorrt_version"]
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(trt_runtime, "gpu_identity", lambda device: {k: here[k] for k in ("gpu_name", "compute_capability")})
    backend = trt_runtime.TensorRTBackend(engine_file, torch.device("cpu"))
    with pytest.raises(DronsegError) as info:
        backend.activate()
    message = str(info.value)
    assert "was built for NVIDIA H100 80GB HBM3 (sm90) with TensorRT 10.3.0" in message and words in message
    assert "dronseg-edge export /runs/a/weights/best.pt --format engine --precision fp16" in message


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(bool(MISSING), reason="needs " + " and ".join(MISSING))
def test_real_engine_runs_on_torch_buffers_and_matches_onnx(tiny_checkpoint, tmp_path):
    from dronseg_edge.export import export_artifact
    from dronseg_edge.runtime.base import preprocess

    result = export_artifact(tiny_checkpoint, fmt="engine", precision="fp32", out_dir=tmp_path, device="cuda",
                             parity=False)
    frame = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    with load_backend(result.path, device="cuda") as engine, load_backend(tmp_path / "tiny_fp32.onnx", device="cpu") as ref:
        x = preprocess(frame, engine.info, engine.device)
        got = engine.infer(x)
        torch.cuda.synchronize()
        expected = ref.infer(x.cpu())
    assert got.is_cuda and got.shape == (1, 12, 64, 96) and engine.provider.startswith("TensorRT")
    assert torch.allclose(got.cpu(), expected, atol=1e-2, rtol=1e-2)


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.skipif(bool(MISSING), reason="needs " + " and ".join(MISSING))
def test_cuda_graph_replay_matches_plain_launches(tiny_checkpoint, tmp_path):
    from dronseg_edge.export import export_artifact

    result = export_artifact(tiny_checkpoint, fmt="engine", precision="fp32", out_dir=tmp_path, device="cuda",
                             parity=False, dynamic=True)
    rng = torch.Generator().manual_seed(0)
    frames = [torch.randn(shape, generator=rng) for shape in [(1, 3, 64, 96)] * 2 + [(2, 3, 64, 96)]]
    with load_backend(result.path, device="cuda", cuda_graph=False) as plain:
        expected = [plain.infer(x.cuda()).cpu() for x in frames]
    with load_backend(result.path, device="cuda", cuda_graph=True) as graphed:
        got = [graphed.infer(x.cuda()) for x in frames]  # the second replays, the third recaptures
        torch.cuda.synchronize()
        assert graphed.cuda_graph and graphed.provider.endswith("+ CUDA graph")
    for a, b in zip(got, expected):
        assert torch.allclose(a.cpu(), b, atol=1e-4, rtol=1e-4)
    assert not torch.equal(got[0], got[1])  # each result is its own tensor, not the graph's reused buffer
