"""OnnxRuntimeBackend's provider choice against a fake ``onnxruntime`` that behaves like the real one
on a GPU machine: sessions that silently fall back to default options, the TensorRT chain, TF32, the
TensorRT engine cache folder; and the real CPU session's inference mode."""

from __future__ import annotations

import errno
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import dronseg_edge.runtime.onnxruntime as ort_runtime
from dronseg_edge.errors import BackendUnavailable, DronsegError
from dronseg_edge.metadata import ModelInfo
from dronseg_edge.runtime.onnxruntime import OnnxRuntimeBackend
from testkit import ort_cuda_works

CUDA, TRT, CPU_EP = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"


class FakeSession:
    def __init__(self, providers: list, options: dict):
        self._providers, self._options = providers, options

    def get_providers(self):
        return list(self._providers)

    def get_provider_options(self):
        return {name: dict(self._options.get(name, {})) for name in self._providers}

    def get_inputs(self):
        return [types.SimpleNamespace(name="images", type="tensor(float)", shape=[1, 3, 64, 96])]

    def get_outputs(self):
        return [types.SimpleNamespace(name="logits", type="tensor(float)", shape=[1, 12, 64, 96])]


class FakeOrt(types.ModuleType):
    """onnxruntime-gpu as older versions behave: a session whose providers cannot start is made again,
    silently, with default options (CUDA on device 0 without a graph, when TensorRT is listed), and
    ``enable_fallback`` is not understood. ``failing``: providers that cannot start ("cuda_graph" for
    the CUDA provider with its graph on)."""

    __version__ = "1.19.2"

    def __init__(self, failing=(), available=(TRT, CUDA, CPU_EP)):
        super().__init__("onnxruntime")
        self.chains: list[list] = []
        fake = self

        class SessionOptions:
            def add_session_config_entry(self, key, value):
                pass

        def get_available_providers():
            return list(available)

        def inference_session(path, sess_options=None, providers=None, **kwargs):
            fake.chains.append(providers)
            names = [p[0] if isinstance(p, tuple) else p for p in providers]
            options = {p[0]: dict(p[1]) for p in providers if isinstance(p, tuple)}
            fails = any(name in failing for name in names) or (
                "cuda_graph" in failing and options.get(CUDA, {}).get("enable_cuda_graph") == "1")
            if fails:
                return FakeSession([CUDA, CPU_EP], {CUDA: {"device_id": "0", "enable_cuda_graph": "0", "use_tf32": "1"}})
            return FakeSession(names, options)

        self.SessionOptions = SessionOptions
        self.get_available_providers = get_available_providers
        self.InferenceSession = inference_session


@pytest.fixture
def model(tmp_path, monkeypatch):
    """An .onnx path whose metadata is given (the fake sessions never read the file)."""
    path = tmp_path / "models" / "m_fp32.onnx"
    path.parent.mkdir()
    path.write_bytes(b"")  # an empty protobuf message: nothing for the external-data check to find
    info = {"precision": "fp32"}
    monkeypatch.setattr(OnnxRuntimeBackend, "read_info",
                        lambda self: ModelInfo(arch="x", input_size=(96, 64), batch=1, precision=info["precision"]))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return path, info


def install(monkeypatch, **kwargs) -> FakeOrt:
    fake = FakeOrt(**kwargs)
    monkeypatch.setitem(sys.modules, "onnxruntime", fake)
    return fake


def names(chain) -> list[str]:
    return [p[0] if isinstance(p, tuple) else p for p in chain]


def options(chain, provider) -> dict:
    return next(p[1] for p in chain if isinstance(p, tuple) and p[0] == provider)


def test_cuda_graph_that_cannot_start_is_retried_without_it_on_the_same_device(model, monkeypatch):
    fake = install(monkeypatch, failing=("cuda_graph",))
    backend = OnnxRuntimeBackend(model[0], torch.device("cuda", 1), provider="cuda")
    backend.activate()
    assert len(fake.chains) == 2
    assert options(fake.chains[0], CUDA)["enable_cuda_graph"] == "1"
    assert "enable_cuda_graph" not in options(fake.chains[1], CUDA) and options(fake.chains[1], CUDA)["device_id"] == "1"
    assert backend.cuda_graph is False
    assert backend.provider.startswith("CUDAExecutionProvider (tried: cuda + CUDA graph: ")
    assert "+ CUDA graph" not in backend.provider.split(" (tried")[0]
    assert backend.session.get_provider_options()[CUDA]["device_id"] == "1"


def test_cuda_graph_that_starts_is_reported(model, monkeypatch):
    install(monkeypatch)
    backend = OnnxRuntimeBackend(model[0], torch.device("cuda"), provider="cuda")
    backend.activate()
    assert backend.cuda_graph is True and backend.provider == "CUDAExecutionProvider + CUDA graph"


def test_tensorrt_chain_keeps_cuda_between_tensorrt_and_cpu(model, monkeypatch):
    fake = install(monkeypatch)
    backend = OnnxRuntimeBackend(model[0], torch.device("cuda", 1), provider="tensorrt")
    backend.activate()
    chain = fake.chains[0]
    assert names(chain) == [TRT, CUDA, CPU_EP] and backend.provider.startswith(TRT)
    assert options(chain, CUDA)["device_id"] == "1" and "enable_cuda_graph" not in options(chain, CUDA)
    assert options(chain, TRT)["trt_engine_cache_path"] == str(model[0].parent.resolve() / ".ort_trt_cache")


def test_tensorrt_falling_back_to_default_cuda_options_is_not_taken_for_tensorrt(model, monkeypatch):
    model[1]["precision"] = "fp16"  # auto asks TensorRT first only for reduced-precision models
    fake = install(monkeypatch, failing=(TRT,))
    backend = OnnxRuntimeBackend(model[0], torch.device("cuda", 1))
    backend.activate()
    # auto: TensorRT silently became CUDA on device 0; the backend moves on to its own CUDA session on device 1.
    assert names(fake.chains[-1]) == [CUDA, CPU_EP] and options(fake.chains[-1], CUDA)["device_id"] == "1"
    assert backend.provider.startswith(
        "CUDAExecutionProvider + CUDA graph (tried: tensorrt: onnxruntime fell back to CUDAExecutionProvider")
    with pytest.raises(BackendUnavailable, match="cannot run .* on tensorrt"):
        OnnxRuntimeBackend(model[0], torch.device("cuda", 1), provider="tensorrt").activate()


def test_a_session_on_the_wrong_device_is_refused(model, monkeypatch):
    install(monkeypatch, failing=("cuda_graph",))
    backend = OnnxRuntimeBackend(model[0], torch.device("cuda", 1), provider="cuda")
    monkeypatch.setattr(OnnxRuntimeBackend, "_cuda_options", lambda self, graph: {"enable_cuda_graph": "1"})
    with pytest.raises(BackendUnavailable, match="fell back to its defaults \\(device 0, not 1\\)"):
        backend.activate()


@pytest.mark.parametrize("precision, tf32", [("fp32", "0"), ("fp16", None), ("int8", None)])
def test_fp32_models_run_without_tf32(model, monkeypatch, precision, tf32):
    path, info = model
    info["precision"] = precision
    fake = install(monkeypatch)
    OnnxRuntimeBackend(path, torch.device("cuda"), provider="tensorrt").activate()
    OnnxRuntimeBackend(path, torch.device("cuda"), provider="cuda").activate()
    for chain in fake.chains:
        assert options(chain, CUDA).get("use_tf32") == tf32


@pytest.mark.parametrize("precision, first", [("fp32", CUDA), ("fp16", TRT), ("int8", TRT)])
def test_auto_leaves_tensorrt_out_for_fp32_models(model, monkeypatch, precision, first):
    """TensorRT cannot be kept off TF32 through ONNX Runtime: auto runs fp32 on the CUDA provider (use_tf32=0)."""
    path, info = model
    info["precision"] = precision
    fake = install(monkeypatch)
    backend = OnnxRuntimeBackend(path, torch.device("cuda"))
    backend.activate()
    assert [names(chain)[0] for chain in fake.chains] == [first]
    assert backend.provider.startswith(first) and "TF32" not in backend.provider


def test_explicit_tensorrt_for_an_fp32_model_says_it_runs_with_tf32(model, monkeypatch, caplog):
    fake = install(monkeypatch)
    backend = OnnxRuntimeBackend(model[0], torch.device("cuda"), provider="tensorrt")
    with caplog.at_level("WARNING", logger="dronseg_edge"):
        backend.activate()
    assert names(fake.chains[0])[0] == TRT and backend.provider == f"{TRT} ({ort_runtime.TRT_TF32_NOTE})"
    assert "runs with TF32" in caplog.text and "provider='cuda' keeps strict fp32" in caplog.text and "--provider" not in caplog.text


def test_tensorrt_options_are_the_providers_own_and_none_of_them_is_tf32(model, monkeypatch):
    """Checked against every trt_* key of onnxruntime-gpu 1.31.1's TensorRT provider library (tests/runtime/data)."""
    known = {line for line in (Path(__file__).parent / "data" / "onnxruntime-1.31.1-tensorrt-options.txt").read_text().split()
             if line.startswith("trt_")}
    assert len(known) == 46 and {"trt_fp16_enable", "trt_cuda_graph_enable", "trt_tactic_sources"} <= known
    assert not [key for key in known if "tf32" in key]  # hence TRT_TF32_NOTE
    install(monkeypatch)
    chain = OnnxRuntimeBackend(model[0], torch.device("cuda"), provider="tensorrt")._chain("tensorrt", graph=False)
    used = set(options(chain, TRT))
    assert used - {"device_id"} <= known and "trt_engine_cache_path" in used


def test_engine_cache_moves_to_the_user_cache_when_the_model_folder_is_read_only(model, monkeypatch, tmp_path):
    path, _ = model
    folder = path.parent.resolve()
    real_file = tempfile.TemporaryFile

    def read_only_model_folder(*args, dir, **kwargs):  # tests run as root, for whom chmod does not stop writes
        if Path(dir).resolve().is_relative_to(folder):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_file(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only_model_folder)
    assert ort_runtime.trt_engine_cache_dir(path) == tmp_path / "cache" / "dronseg-edge" / "ort_trt"
    assert (tmp_path / "cache" / "dronseg-edge" / "ort_trt").is_dir() and not (folder / ".ort_trt_cache").exists()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ort_runtime.trt_engine_cache_dir(path) == tmp_path / "home" / ".cache" / "dronseg-edge" / "ort_trt"


def test_engine_cache_stays_beside_a_writable_model(model):
    path, _ = model
    assert ort_runtime.trt_engine_cache_dir(path) == path.parent.resolve() / ".ort_trt_cache"
    assert (path.parent / ".ort_trt_cache").is_dir()


def test_ort_cuda_works_asks_for_a_real_cuda_session(monkeypatch):
    fake = install(monkeypatch, failing=(CUDA,))

    def cpu_only(model, sess_options=None, providers=None, **kwargs):
        fake.chains.append(providers)
        return FakeSession([CPU_EP], {})  # what onnxruntime-gpu does when its CUDA libraries do not load

    fake.InferenceSession = cpu_only
    assert ort_cuda_works.__wrapped__() is False and fake.chains == [[CUDA, CPU_EP]]
    fake.InferenceSession = lambda model, sess_options=None, providers=None, **kw: FakeSession([CUDA, CPU_EP], {})
    assert ort_cuda_works.__wrapped__() is True
    install(monkeypatch, available=(CPU_EP,))
    assert ort_cuda_works.__wrapped__() is False


def test_cpu_session_runs_under_inference_mode(tiny_checkpoint, onnx_export):
    path = onnx_export(tiny_checkpoint)
    with OnnxRuntimeBackend(path, torch.device("cpu")) as backend:
        modes = []
        session = backend.session
        backend.session = types.SimpleNamespace(
            run=lambda *args: modes.append(torch.is_inference_mode_enabled()) or session.run(*args))
        x = torch.from_numpy(np.zeros((1, 3, 64, 96), dtype=np.float32))
        with torch.inference_mode():
            backend.infer(x)
        out = backend.infer(x)
    assert modes == [True, True] and out.is_inference()


class InvalidProtobuf(Exception):
    """Stands in for onnxruntime's own exception class of that name."""


@pytest.mark.parametrize("provider", ["auto", "cuda"])
def test_a_file_no_provider_can_load_is_the_files_error_not_a_gpu_warning(provider, model, monkeypatch, caplog):
    """On a GPU, a file that fails every session is named (exit code 2), with no 'could not start a GPU
    provider' warning and no BackendUnavailable: the CPU session's failure shows it is the file."""
    fake = install(monkeypatch)

    def refuse(path, sess_options=None, providers=None, **kwargs):
        fake.chains.append(providers)
        raise InvalidProtobuf(f"[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from {path} failed:Protobuf parsing failed.")

    fake.InferenceSession = refuse
    backend = OnnxRuntimeBackend(model[0], torch.device("cuda"), provider=provider)
    with caplog.at_level("WARNING"), pytest.raises(DronsegError) as info:
        backend.activate()
    assert type(info.value) is DronsegError and info.value.exit_code == 2
    assert str(info.value) == (f"onnxruntime 1.19.2 cannot load {model[0]} (Protobuf parsing failed.): it is not an ONNX "
                               "model (damaged, cut short, or another kind of file): re-export it")
    assert names(fake.chains[-1]) == [CPU_EP] and not [r for r in caplog.records if "GPU provider" in r.getMessage()]


def test_a_gpu_provider_that_cannot_start_warns_and_runs_on_the_cpu(model, monkeypatch, caplog):
    fake = install(monkeypatch)
    real = fake.InferenceSession

    def no_gpu(path, sess_options=None, providers=None, **kwargs):
        if names(providers)[0] != CPU_EP:
            fake.chains.append(providers)
            raise RuntimeError("CUDA driver version is insufficient")
        return real(path, sess_options, providers, **kwargs)

    fake.InferenceSession = no_gpu
    backend = OnnxRuntimeBackend(model[0], torch.device("cuda"))
    with caplog.at_level("WARNING"):
        backend.activate()
    assert backend.provider.startswith(CPU_EP)
    assert any("could not start a GPU provider" in r.getMessage() for r in caplog.records)
    explicit = OnnxRuntimeBackend(model[0], torch.device("cuda"), provider="cuda")
    with pytest.raises(BackendUnavailable, match="cannot run .* on cuda \\(cuda \\+ CUDA graph: CUDA driver"):
        explicit.activate()


def test_a_cpu_only_onnxruntime_on_a_gpu_machine_warns_and_runs_on_the_cpu(model, monkeypatch, caplog):
    install(monkeypatch, available=(CPU_EP,))
    backend = OnnxRuntimeBackend(model[0], torch.device("cuda"))
    backend.activate()
    assert backend.provider == CPU_EP
    assert "onnxruntime 1.19.2 has no CUDA provider; m_fp32.onnx runs on the CPU (pip install onnxruntime-gpu)" \
        in caplog.text


def test_a_free_batch_axis_gets_no_cuda_graph(model, monkeypatch):
    """A graph replays one shape; a Triton-style file (fixed size, any batch) is called with several."""
    fake = install(monkeypatch)
    monkeypatch.setattr(OnnxRuntimeBackend, "read_info",
                        lambda self: ModelInfo(arch="x", input_size=(96, 64), batch=None))
    monkeypatch.setattr(FakeSession, "get_inputs", lambda self: [
        types.SimpleNamespace(name="images", type="tensor(float)", shape=["batch", 3, 64, 96])])
    monkeypatch.setattr(FakeSession, "get_outputs", lambda self: [
        types.SimpleNamespace(name="logits", type="tensor(float)", shape=["batch", 12, 64, 96])])
    backend = OnnxRuntimeBackend(model[0], torch.device("cuda"), provider="cuda")
    backend.activate()
    assert backend.cuda_graph is False and "enable_cuda_graph" not in options(fake.chains[0], CUDA)
