"""TensorRTBackend: metadata from the sidecar, refusal of foreign engines and of missing pieces, the
module's imports, and real runs where TensorRT, cuda-bindings and a GPU exist. The host-memory flow is
in test_tensorrt_host.py, the torch-tensor flow in test_tensorrt_torch.py."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fake_tensorrt import BUILT, install, write_engine

import dronseg_edge.runtime.tensorrt as trt_runtime
from dronseg_edge.devices import Device
from dronseg_edge.errors import BackendUnavailable, DronsegError
from dronseg_edge.runtime.registry import load_backend
from testkit import requires_tensorrt

ROOT = Path(__file__).resolve().parents[2]
needs_tensorrt_gpu = requires_tensorrt(cuda_bindings=True)


@pytest.fixture
def engine_file(tmp_path):
    return write_engine(tmp_path)


def test_registry_reads_engine_metadata_without_tensorrt(engine_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    backend = load_backend(engine_file, device="cpu")
    assert isinstance(backend, trt_runtime.TensorRTBackend)
    assert backend.info.precision == "fp16" and backend.info.input_size == (96, 64)
    with pytest.raises(BackendUnavailable, match=r"dronseg-edge\[trt\].*trt-cu12.*JetPack.*--system-site-packages"):
        backend.activate()


def test_engine_without_sidecar_is_refused_with_rebuild_hint(tmp_path):
    path = tmp_path / "x.engine"
    path.write_bytes(b"plan")
    with pytest.raises(DronsegError, match="no metadata file x.engine.json"):
        load_backend(path, device="cpu")


@pytest.mark.parametrize("version, gpu, words", [
    ("11.4.0.106", (BUILT["gpu_name"], (9, 0)), "TensorRT 11.4.0.106"),
    ("10.3.0", ("Orin", (8, 7)), "Orin (sm87)"),
])
def test_engine_from_another_gpu_or_version_is_refused(engine_file, monkeypatch, version, gpu, words):
    install(monkeypatch, {"gpu_name": gpu[0], "capability": gpu[1]}, version=version)
    backend = trt_runtime.TensorRTBackend(engine_file, Device("cuda", 0))
    with pytest.raises(DronsegError) as info:
        backend.activate()
    message = str(info.value)
    assert "was built for NVIDIA H100 80GB HBM3 (sm90) with TensorRT 10.3.0" in message and words in message
    assert "dronseg-edge export /runs/a/weights/best.pt --format engine --precision fp16" in message


def test_engine_on_the_cpu_is_refused(engine_file, monkeypatch):
    install(monkeypatch)
    with pytest.raises(DronsegError, match="TensorRT engines run on NVIDIA GPUs only, not on --device cpu: use --device cuda"):
        trt_runtime.TensorRTBackend(engine_file, Device("cpu")).activate()


def test_missing_cuda_bindings_say_how_to_install_them(engine_file, monkeypatch):
    install(monkeypatch)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    with pytest.raises(BackendUnavailable, match=r"pip install cuda-bindings"):
        trt_runtime.TensorRTBackend(engine_file, Device("cuda")).activate()


def test_engine_on_the_current_gpu_when_no_index_is_given(engine_file, monkeypatch):
    cudart, _ = install(monkeypatch, {"devices": 2})
    cudart.current = 1
    with trt_runtime.TensorRTBackend(engine_file, Device("cuda")) as backend:
        assert backend._index == 1
        assert backend.provider == "TensorRT 10.3.0 fp16 (fp32) + CUDA graph"


def test_tensor_types_without_a_numpy_equivalent_are_refused(monkeypatch):
    _, trt = install(monkeypatch)
    assert trt_runtime.numpy_dtype(trt, "HALF") == np.float16
    with pytest.raises(DronsegError, match="engine tensor type BF16 has no numpy equivalent: rebuild"):
        trt_runtime.numpy_dtype(trt, "BF16")


def test_the_module_imports_no_torch_at_import_time():
    """tensorrt.py and cuda_runtime.py import torch only inside the torch-tensor path."""
    for name in ("tensorrt.py", "cuda_runtime.py"):
        tree = ast.parse((ROOT / "dronseg_edge/runtime" / name).read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        modules = [a.name for n in top if isinstance(n, ast.Import) for a in n.names]
        modules += [n.module or "" for n in top if isinstance(n, ast.ImportFrom)]
        assert not [m for m in modules if m.split(".")[0] == "torch" or m.endswith("cuda_graph") or m.endswith("staging")], name
    code = ("import sys, json; import dronseg_edge.runtime.tensorrt\n"
            "print(json.dumps([m for m in ('torch', 'tensorrt', 'cuda.bindings.runtime') if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


# -- real TensorRT on a GPU -------------------------------------------------------------------------


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_tensorrt_gpu
@pytest.mark.parametrize("cuda_graph", [False, True])
def test_real_engine_runs_numpy_and_torch_and_matches_onnx(tiny_checkpoint, tmp_path, cuda_graph):
    import torch

    from dronseg_edge.export import export_artifact
    from testkit import model_input

    result = export_artifact(tiny_checkpoint, fmt="engine", precision="fp32", out_dir=tmp_path, device="cuda", parity=False)
    frame = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    with load_backend(result.path, device="cuda", cuda_graph=cuda_graph) as engine, \
            load_backend(tmp_path / "tiny_fp32.onnx", device="cpu") as ref:
        x = model_input(frame, engine.info, engine.device)
        got = engine.infer(x)
        torch.cuda.synchronize()
        host = [engine.infer(x.cpu().numpy()) for _ in range(2)]  # the second replays a graph
        expected = ref.infer(x.cpu().numpy())
        assert engine.cuda_graph is cuda_graph
    assert got.is_cuda and got.shape == (1, 12, 64, 96) and engine.provider.startswith("TensorRT")
    assert isinstance(host[0], np.ndarray) and host[0].dtype == np.float32
    np.testing.assert_allclose(got.cpu().numpy(), expected, atol=1e-2, rtol=1e-2)
    for out in host:
        np.testing.assert_allclose(out, expected, atol=1e-2, rtol=1e-2)


@pytest.mark.tensorrt
@pytest.mark.gpu
@needs_tensorrt_gpu
def test_cuda_graph_replay_matches_plain_launches(tiny_checkpoint, tmp_path):
    import torch

    from dronseg_edge.export import export_artifact

    result = export_artifact(tiny_checkpoint, fmt="engine", precision="fp32", out_dir=tmp_path, device="cuda",
                             parity=False, dynamic=True)
    rng = torch.Generator().manual_seed(0)
    frames = [torch.randn(shape, generator=rng) for shape in [(1, 3, 64, 96)] * 2 + [(2, 3, 64, 96)]]
    with load_backend(result.path, device="cuda", cuda_graph=False) as plain:
        expected = [plain.infer(x.cuda()).cpu() for x in frames]
    with load_backend(result.path, device="cuda", cuda_graph=True) as graphed:
        got = [graphed.infer(x.cuda()) for x in frames]  # the second replays, the third recaptures
        host = [graphed.infer(x.numpy()) for x in frames]
        torch.cuda.synchronize()
        assert graphed.cuda_graph and graphed.provider.endswith("+ CUDA graph")
    for a, b, c in zip(got, host, expected):
        assert torch.allclose(a.cpu(), c, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(b, c.numpy(), atol=1e-4, rtol=1e-4)
    assert not torch.equal(got[0], got[1])  # each result is its own tensor, not the graph's reused buffer
