"""torch, ONNX Runtime and TensorRT checks: missing libraries warn, providers are tried for real,
TensorRT's build is exercised against a fake module and its names against the real bindings."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dronseg_edge import devices, machine, torch_floor
from dronseg_edge.checks import FAIL, OK, WARN, jetson, onnxruntime_checks, tensorrt_checks, torch_checks

ROOT = Path(__file__).resolve().parents[2]


# --- torch -------------------------------------------------------------------------------------

def test_without_torch_only_onnx_and_engines_run(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    [check] = list(torch_checks.torch_checks())
    assert check.status == WARN and "inference of .onnx/.engine only" in check.detail


def test_torch_here_reports_its_build_and_cuda():
    import torch

    checks = {c.name: c for c in torch_checks.torch_checks()}
    assert checks["torch"].status == OK and checks["torch"].facts == {"version": torch.__version__, "cuda": torch.version.cuda}
    assert checks["cuda"].status in (OK, WARN)  # WARN on a machine without a GPU, with the reason
    for name, check in checks.items():
        if name.startswith("torch gpu"):
            assert " sm " in check.detail and "GiB" in check.detail and "bf16" in check.detail


CPU_TORCH = SimpleNamespace(__version__="2.14.1+cpu", version=SimpleNamespace(cuda=None))


def test_a_cpu_only_torch_without_a_gpu_is_right(monkeypatch):
    monkeypatch.setattr(jetson, "is_jetson", lambda: False)
    monkeypatch.setattr(devices, "driver_device_count", lambda: 0)
    check = torch_checks.no_cuda_check(CPU_TORCH)
    assert check.status == OK and "no NVIDIA GPU here" in check.detail


def test_a_cuda13_torch_under_a_cuda12_driver_says_so(monkeypatch):
    """What `pip install torch` gives a CUDA 12 machine today: torch sees no GPU, and the driver is the cause."""
    monkeypatch.setattr(devices, "cuda_driver_version", lambda: (12, 4))
    monkeypatch.setattr(devices, "driver_device_count", lambda: 1)
    check = torch_checks.no_cuda_check(SimpleNamespace(__version__="2.14.1+cu130", version=SimpleNamespace(cuda="13.0")))
    assert check.status == WARN and "this driver supports CUDA 12.4" in check.detail and "no NVIDIA driver" not in check.detail


def test_a_cuda_torch_that_sees_no_gpu_says_it_runs_on_the_cpu(monkeypatch):
    monkeypatch.setattr(devices, "cuda_driver_version", lambda: None)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    check = torch_checks.no_cuda_check(SimpleNamespace(__version__="2.14.1+cu130", version=SimpleNamespace(cuda="13.0")))
    assert (check.status, check.detail) == (WARN, "torch is built for CUDA 13.0 but sees no GPU (no NVIDIA driver, or "
                                                  "none visible; CUDA_VISIBLE_DEVICES=''): torch runs on the CPU")


def test_a_torchvision_that_cannot_be_imported_warns(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    check = torch_checks.torchvision_check()
    assert check.status == WARN and ": .pt checkpoints cannot be built or loaded (" in check.detail


@pytest.mark.parametrize("on_jetson, gpus, says", [
    (True, 1, "cannot use this Jetson's GPU: pip probably replaced NVIDIA's torch wheel"),
    (False, 2, "cannot use the NVIDIA GPUs the driver shows (2): install a CUDA build of torch"),
])
def test_a_cpu_only_torch_beside_an_nvidia_gpu_warns(monkeypatch, on_jetson, gpus, says):
    """The driver is asked (a CPU-only torch itself sees no GPU), and a Jetson is told where NVIDIA's wheels are."""
    monkeypatch.setattr(jetson, "is_jetson", lambda: on_jetson)
    monkeypatch.setattr(devices, "driver_device_count", lambda: gpus)
    check = torch_checks.no_cuda_check(CPU_TORCH)
    assert check.status == WARN and check.detail.startswith("torch 2.14.1+cpu is a CPU-only build") and says in check.detail
    if on_jetson:
        assert "/docs/jetson.md#nvidias-torch-and-onnx-runtime-wheels" in check.detail


@pytest.mark.parametrize("installed, warned", [("2.8.0", True), ("2.5.0a0+872d972e41.nv24.08", True),
                                               ("2.10.0", False), (None, False)])
def test_a_torch_below_the_checkpoint_floor_is_told_from_its_metadata(monkeypatch, installed, warned):
    """NVIDIA's JetPack 6 wheels (2.8.0 on the Jetson AI Lab index) are older than the floor: said before importing torch."""
    monkeypatch.setattr(torch_checks.machine, "installed_version", lambda name: installed)
    monkeypatch.setitem(sys.modules, "torch", None)  # not importable: the line must not need the import
    checks = {c.name: c for c in torch_checks.torch_checks()}
    assert ("torch checkpoints" in checks) is warned
    if warned:
        floor = ".".join(map(str, torch_floor.SAFE_TORCH))
        line = checks["torch checkpoints"]
        assert line.status == WARN and f"torch {installed} cannot load .pt checkpoints safely" in line.detail
        assert f"install torch >= {floor}" in line.detail and line.facts == {"version": installed, "safe": False}


@pytest.mark.parametrize("arch_list, cc, supported", [
    (["sm_80", "sm_86", "sm_90"], (9, 0), True),
    (["sm_80", "sm_86", "sm_90"], (8, 7), True),   # SASS runs on the same major, same or newer minor: Orin
    (["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"], (8, 9), True),  # torch 2.14+cu130 on an L4 or 4090
    (["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"], (12, 1), True),  # and on a GB10 (sm_121)
    (["sm_86", "sm_90"], (8, 0), False),            # not an older minor
    (["sm_80", "sm_90"], (10, 0), False),           # nor another major, without PTX
    (["sm_90a"], (9, 1), False),                    # arch-specific code runs on its own architecture only
    (["sm_80", "compute_80"], (8, 7), True),        # PTX of an older architecture is compiled by the driver
    (["sm_90", "compute_90"], (8, 9), False),
    ([], (12, 0), True),
])
def test_architecture_support(arch_list, cc, supported):
    assert torch_checks.arch_supported(arch_list, *cc) is supported


def test_a_gpu_whose_kernels_fail_is_a_failure():
    def fail_ones(*args, **kwargs):
        raise RuntimeError("CUDA error: no kernel image is available for execution on the device")

    props = SimpleNamespace(name="NVIDIA RTX PRO 6000", major=12, minor=0, total_memory=96 * 2**30)
    cuda = SimpleNamespace(get_device_properties=lambda i: props, get_arch_list=lambda: ["sm_80", "sm_90"])
    check = torch_checks.gpu_check(SimpleNamespace(cuda=cuda, ones=fail_ones), 0)
    assert check.status == FAIL and "no kernel image" in check.detail and "no kernels for sm_120" in check.detail
    assert "96.0 GiB" in check.detail and "bf16 yes" in check.detail


# --- ONNX Runtime ------------------------------------------------------------------------------

def test_without_onnxruntime_onnx_files_cannot_run(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    [check] = list(onnxruntime_checks.onnxruntime_checks())
    assert check.status == WARN and check.detail.startswith("not installed: .onnx files cannot run")


def test_an_onnxruntime_built_for_numpy_1_under_numpy_2_names_the_fix(monkeypatch):
    """onnxruntime 1.17.3 under numpy 2 (both in the core's ranges) cannot load: numpy < 2 fixes it, not pip install."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    monkeypatch.setattr(machine, "installed_version", {"onnxruntime-gpu": "1.18.1", "numpy": "2.0.2"}.get)
    [check] = list(onnxruntime_checks.onnxruntime_checks())
    assert check.status == WARN and check.detail.endswith("(onnxruntime-gpu 1.18.1 was built against numpy 1.x and cannot "
                                                          "load under numpy 2.0.2: pip install 'numpy<2' (or 'onnxruntime-gpu>=1.19'))")


def test_the_cpu_provider_runs_a_real_session_without_onnx(monkeypatch):
    """The test model is package data: the core install (no onnx) tries its providers too."""
    ort = pytest.importorskip("onnxruntime")
    monkeypatch.setitem(sys.modules, "onnx", None)
    checks = {c.name: c for c in onnxruntime_checks.onnxruntime_checks()}
    assert checks["onnxruntime"].status == OK and "CPU" in checks["onnxruntime"].detail
    assert checks["onnxruntime"].facts == {"version": ort.__version__, "providers": ort.get_available_providers()}
    assert checks["ort CPU"].status == OK and "ran a test model" in checks["ort CPU"].detail
    assert checks["ort CPU"].facts == {"provider": "CPUExecutionProvider", "runs": True}
    assert "ort Azure" not in checks and not any("not tried" in c.detail for c in checks.values())


def test_the_shipped_test_model_is_a_valid_one_node_relu():
    onnx = pytest.importorskip("onnx")
    data = onnxruntime_checks.probe_model()
    model = onnx.load_from_string(data)
    onnx.checker.check_model(model)
    assert len(data) < 500 and [node.op_type for node in model.graph.node] == ["Relu"]
    assert [(v.name, [d.dim_value for d in v.type.tensor_type.shape.dim]) for v in model.graph.input] == [("x", [1, 4])]
    assert model.ir_version <= 8 and model.opset_import[0].version == 13  # loadable by the ONNX Runtime builds on Jetsons


class FallbackSession:
    """What onnxruntime-gpu does when CUDA's libraries are missing: log natively, run on the CPU."""

    def __init__(self, model, sess_options=None, providers=None):
        if providers == ["CPUExecutionProvider"]:
            raise RuntimeError("no CPU today")
        os.write(2, b"2026-01-01 [E:onnxruntime:Default, provider_bridge_ort.cc:2036 TryGetProviderInfo_CUDA] "
                    b"Failed to load library libonnxruntime_providers_cuda.so with error: libcudnn.so.9: "
                    b"cannot open shared object file\n")

    def get_providers(self):
        return ["CPUExecutionProvider"]

    def run(self, names, feeds):
        return [np.maximum(feeds["x"], 0)]


def test_a_listed_provider_that_falls_back_warns_with_the_native_reason():
    fake = SimpleNamespace(SessionOptions=SimpleNamespace, InferenceSession=FallbackSession)
    model = onnxruntime_checks.probe_model()
    check = onnxruntime_checks.provider_check(fake, "CUDAExecutionProvider", model)
    assert check.status == WARN and check.name == "ort CUDA"
    assert "fell back to CPU" in check.detail and "libcudnn.so.9: cannot open shared object file" in check.detail
    check = onnxruntime_checks.provider_check(fake, "CPUExecutionProvider", model)
    assert check.status == FAIL and "no CPU today" in check.detail


def test_onnxruntimes_own_fallback_print_stays_off_stdout(monkeypatch, capsys):
    """onnxruntime-gpu without TensorRT's libraries prints 'EP Error ...' on stdout, where `checks --json -` writes."""
    pytest.importorskip("onnxruntime")
    import onnxruntime
    from onnxruntime.capi import _pybind_state as C

    def no_tensorrt(*args):
        raise RuntimeError("RegisterTensorRTPluginsAsCustomOps Please install TensorRT libraries as mentioned in the GPU "
                           "requirements page, make sure they're in the PATH or LD_LIBRARY_PATH")

    monkeypatch.setattr(C, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(C, "register_tensorrt_plugins_as_custom_ops", no_tensorrt, raising=False)  # GPU builds only
    check = onnxruntime_checks.provider_check(onnxruntime, "TensorrtExecutionProvider", onnxruntime_checks.probe_model())
    assert check.status == WARN and "fell back to CPU" in check.detail and "Please install TensorRT" in check.detail
    assert capsys.readouterr().out == ""


def test_both_onnxruntime_packages_installed_warns(monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(onnxruntime_checks, "installed_version", lambda name: "1.20.1")  # onnxruntime and -gpu
    checks = {c.name: c for c in onnxruntime_checks.onnxruntime_checks()}
    assert checks["onnxruntime install"].status == WARN and "share one module" in checks["onnxruntime install"].detail


# --- TensorRT ----------------------------------------------------------------------------------

@pytest.mark.parametrize("on_jetson, hint", [(True, "create the venv with --system-site-packages"),
                                             (False, "pip install 'dronseg-edge[trt]'")])
def test_without_tensorrt_the_hint_fits_the_machine(monkeypatch, on_jetson, hint):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setattr(jetson, "is_jetson", lambda: on_jetson)
    [check] = list(tensorrt_checks.tensorrt_checks())
    assert check.status == WARN and check.detail.startswith("not installed: no .engine") and hint in check.detail


def test_tensorrt_bindings_without_their_libraries_warn_with_the_reason(tmp_path, monkeypatch):
    package = tmp_path / "tensorrt"
    package.mkdir()
    (package / "__init__.py").write_text("raise OSError('libnvinfer.so.10: cannot open shared object file')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    [check] = list(tensorrt_checks.tensorrt_checks())
    assert check.status == WARN and "libnvinfer.so.10" in check.detail


def fake_tensorrt(plan=b"plan", error=None, version="10.3.0"):
    """Just enough of the tensorrt module for the one-layer build; records what was built."""
    built = {}

    class ILogger:
        Severity = SimpleNamespace(INTERNAL_ERROR="internal", ERROR="error", WARNING="warning")

        def __init__(self):
            pass

    class Network:
        def add_input(self, name, dtype, shape):
            built["input"] = (name, dtype, shape)
            return "x"

        def add_activation(self, tensor, kind):
            built["activation"] = (tensor, kind)
            return SimpleNamespace(get_output=lambda index: "y")

        def mark_output(self, tensor):
            built["output"] = tensor

    class Builder:
        def __init__(self, logger):
            self.logger = logger

        def create_network(self, flags):
            built["flags"] = flags
            return Network()

        def create_builder_config(self):
            return SimpleNamespace(set_memory_pool_limit=lambda pool, size: built.setdefault("workspace", size))

        def build_serialized_network(self, network, config):
            if error:
                self.logger.log(ILogger.Severity.WARNING, "just a warning")
                self.logger.log(ILogger.Severity.ERROR, error)
            return plan

    kinds = SimpleNamespace(EXPLICIT_BATCH=0) if version.startswith("8.") else SimpleNamespace(STRONGLY_TYPED=5)
    return SimpleNamespace(__version__=version, ILogger=ILogger, Builder=Builder, float32="float32",
                           NetworkDefinitionCreationFlag=kinds,
                           ActivationType=SimpleNamespace(RELU="relu"), MemoryPoolType=SimpleNamespace(WORKSPACE="ws")), built


def test_tensorrt_builds_a_one_layer_engine():
    trt, built = fake_tensorrt()
    check = tensorrt_checks.build_check(trt)
    assert check.status == OK and check.detail.startswith("10.3.0, built a one-layer engine in")
    assert built["input"] == ("x", "float32", (1, 4)) and built["activation"] == ("x", "relu") and built["output"] == "y"
    assert built["flags"] == 1 << 5  # the flag's bit from the enum, never a literal


def test_tensorrt_8_6_builds_an_explicit_batch_network():
    trt, built = fake_tensorrt(version="8.6.2")
    assert tensorrt_checks.build_check(trt).status == OK and built["flags"] == 1 << 0  # EXPLICIT_BATCH


def test_tensorrt_older_than_8_6_fails_naming_the_jetpack_that_has_one():
    trt, built = fake_tensorrt(version="8.5.2")
    check = tensorrt_checks.build_check(trt)
    assert check.status == FAIL and check.detail.startswith("TensorRT 8.5.2 is older than 8.6")
    assert "JetPack 6.0 (TensorRT 8.6.2)" in check.detail and built == {}  # nothing was built


def test_tensorrt_that_cannot_build_fails_with_its_own_message():
    trt, _ = fake_tensorrt(plan=None, error="[defaultAllocator.cpp::allocate] Error Code 1: Cuda Runtime (out of memory)")
    check = tensorrt_checks.build_check(trt)
    assert check.status == FAIL and check.detail.endswith("Cuda Runtime (out of memory)")
    trt.Builder = lambda logger: (_ for _ in ()).throw(TypeError("pybind11::init(): factory function returned nullptr"))
    check = tensorrt_checks.build_check(trt)
    assert check.status == FAIL and "TypeError: pybind11::init()" in check.detail


def test_every_tensorrt_name_exists_in_8_6_10_3_and_11_4():
    """The name lists of tests/export/data, read with tests/export/test_tensorrt_names.py's own extractor."""
    spec = importlib.util.spec_from_file_location("tensorrt_names_check", ROOT / "tests/export/test_tensorrt_names.py")
    names_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(names_check)
    version_names = {version: names_check._names(version) for version in names_check.VERSIONS}
    source = (ROOT / "dronseg_edge/checks/tensorrt_checks.py").read_text()
    required, _optional = names_check.tensorrt_names(source)
    assert {"Builder", "add_activation", "build_serialized_network", "ILogger"} <= required
    # `strings` cannot show mark_output: the linker stored it as the tail of "unmark_output" (string merging).
    for names in version_names.values():
        assert "unmark_output" in names
    assert names_check.missing_names(source, version_names) == {v: ["mark_output"] for v in version_names}
