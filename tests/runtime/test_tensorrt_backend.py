"""TensorRTBackend: metadata from the sidecar, refusal of foreign engines, streams and CUDA-graph capture
against a fake tensorrt and fake torch.cuda on the CPU, and a real run where TensorRT exists."""

from __future__ import annotations

import ctypes
import importlib.util
import sys
import types

import numpy as np
import pytest
import torch

from fake_cuda import FakeCuda

import dronseg_edge.runtime.tensorrt as trt_runtime
from dronseg_edge.runtime import tensorrt_env
from dronseg_edge.errors import BackendUnavailable, DronsegError
from dronseg_edge.metadata import ModelInfo, write_engine_sidecar
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
    monkeypatch.setattr(tensorrt_env, "gpu_identity", lambda device: {k: here[k] for k in ("gpu_name", "compute_capability")})
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


class FakeEngineModule(types.ModuleType):
    """The runtime half of ``tensorrt`` on the CPU: an "engine" whose one output is 2 x its input,
    written through the addresses the backend binds (so wrong bindings give wrong numbers); every
    ``execute_async_v3`` records the stream handle and whether it ran under inference mode."""

    def __init__(self, version: str = BUILT["tensorrt_version"]):
        super().__init__("tensorrt")
        self.__version__ = version
        self.launches: list[dict] = []
        fake = self
        self.DataType = types.SimpleNamespace(FLOAT="FLOAT", HALF="HALF", INT32="INT32", INT8="INT8", UINT8="UINT8",
                                              BOOL="BOOL", INT64="INT64", BF16="BF16")
        self.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")

        class Context:
            def __init__(self):
                self.shape, self.addresses = None, {}

            def set_input_shape(self, name, shape):
                self.shape = tuple(shape)
                return True

            def set_tensor_address(self, name, address):
                self.addresses[name] = address

            def get_tensor_shape(self, name):
                return self.shape

            def execute_async_v3(self, stream_handle):
                count = int(np.prod(self.shape))
                source = np.ctypeslib.as_array((ctypes.c_float * count).from_address(self.addresses["images"]))
                target = np.ctypeslib.as_array((ctypes.c_float * count).from_address(self.addresses["logits"]))
                target[:] = source * 2
                fake.launches.append({"stream": stream_handle, "inference_mode": torch.is_inference_mode_enabled()})
                return True

        class Engine:
            num_io_tensors = 2

            def get_tensor_name(self, index):
                return ["images", "logits"][index]

            def get_tensor_mode(self, name):
                return "INPUT" if name == "images" else "OUTPUT"

            def get_tensor_dtype(self, name):
                return "FLOAT"

            def create_execution_context(self):
                return Context()

        class Runtime:
            def __init__(self, logger):
                pass

            def deserialize_cuda_engine(self, plan):
                return Engine()

        class Logger:
            WARNING = "WARNING"

            def __init__(self, severity):
                pass

        self.Logger, self.Runtime = Logger, Runtime


@pytest.fixture
def fake_engine(engine_file, monkeypatch):
    """(backend factory, fake tensorrt, fake torch.cuda) for an engine that runs on the CPU."""
    module = FakeEngineModule()
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setattr(tensorrt_env, "gpu_identity", lambda device: {k: BUILT[k] for k in ("gpu_name", "compute_capability")})
    cuda = FakeCuda().install(monkeypatch)

    def make(**options):
        backend = trt_runtime.TensorRTBackend(engine_file, torch.device("cpu"), **options)
        backend.info.head = "logits"
        return backend

    return make, module, cuda


def test_engine_runs_on_its_own_stream_ordered_with_the_callers(fake_engine):
    make, trt, cuda = fake_engine
    x = torch.randn(1, 3, 64, 96)
    with make(cuda_graph=False) as backend:
        own = backend._stream
        cuda.default.waited_for.clear()
        out = backend.infer(x)
    assert torch.allclose(out, 2 * x)
    assert [launch["stream"] for launch in trt.launches] == [own.cuda_stream]
    assert own.cuda_stream != cuda.default.cuda_stream  # not the legacy default stream
    assert own.waited_for == [cuda.default]  # the input is complete before the engine reads it
    assert cuda.default.waited_for == [own]  # and whatever reads the output comes after the engine


def test_engine_runs_under_inference_mode_whatever_the_caller(fake_engine):
    make, trt, _ = fake_engine
    x = torch.randn(1, 3, 64, 96)
    with make() as backend:
        with torch.inference_mode():
            backend.infer(x)
        backend.infer(x + 1)  # outside: the graph's fixed input buffer was made inside
    assert [launch["inference_mode"] for launch in trt.launches] == [True] * len(trt.launches)


def test_cuda_graph_is_captured_on_the_backends_stream_after_one_plain_launch(fake_engine):
    make, trt, cuda = fake_engine
    x = torch.randn(1, 3, 64, 96)
    with make() as backend:
        own = backend._stream
        backend.infer(x)
        assert backend.provider.endswith("+ CUDA graph")
    warmup, captured = trt.launches
    assert captured["stream"] == own.cuda_stream and warmup["stream"] not in (own.cuda_stream, cuda.default.cuda_stream)
    assert cuda.captures == [{"stream": own, "mode": "thread_local", "locked": True, "thread": cuda.captures[0]["thread"]}]


def test_engine_that_cannot_be_captured_runs_without_a_graph(fake_engine, monkeypatch, caplog):
    make, trt, _ = fake_engine
    failing = FakeCuda(capture_fails=True).install(monkeypatch)
    x = torch.randn(1, 3, 64, 96)
    with caplog.at_level("WARNING", logger="dronseg_edge"):
        with make() as backend:
            out = backend.infer(x)
            assert backend.cuda_graph is False and not backend.provider.endswith("+ CUDA graph")
            backend.infer(x)
    assert torch.allclose(out, 2 * x) and len(failing.captures) == 1
    assert "CUDA graph capture failed" in caplog.text
    assert trt.launches[-1]["stream"] == backend._stream.cuda_stream
