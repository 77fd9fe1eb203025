"""TensorRT engine building: the 10.x/11.x branching against a recording fake ``tensorrt`` module,
and a real build + parity where TensorRT and a GPU exist (skipped here, with the reason)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import shutil
import sys
import types
from pathlib import Path

import pytest
import torch

import dronseg_edge.export.tensorrt as trt_export
from dronseg_edge.runtime import cuda_runtime, tensorrt_env
from dronseg_edge.errors import BackendUnavailable, DronsegError
from dronseg_edge.export import ExportOptions, export_artifact
from dronseg_edge.metadata import ModelInfo, read_engine_sidecar, read_onnx_info, sidecar_path
from testkit import requires_tensorrt

GPU = {"gpu_name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}


class FakeTensorRT(types.ModuleType):
    """Just enough of the tensorrt module for build_engine; records what the code asked for.

    The 11.x fake has no BuilderFlag.FP16/INT8 (removed in 11), so touching them raises AttributeError;
    both have TF32, which TensorRT sets by default.
    """

    def __init__(self, version: str, parse_ok: bool = True, build_ok: bool = True, dla_cores: int = 0):
        super().__init__("tensorrt")
        self.__version__ = version
        self.calls: list[tuple] = []
        self.current_device = [0]  # the CUDA device current while TensorRT works (the fixture's on_device sets it)
        major = int(version.split(".")[0])
        # 8.6: EXPLICIT_BATCH only; 10.x: both (EXPLICIT_BATCH deprecated, ignored); 11.x: STRONGLY_TYPED only.
        kinds = {8: {"EXPLICIT_BATCH": 0}, 10: {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 5}}.get(major, {"STRONGLY_TYPED": 5})
        self.NetworkDefinitionCreationFlag = types.SimpleNamespace(**kinds)
        flags = {"FP16": "FP16", "INT8": "INT8", "TF32": "TF32"} if major < 11 else {"TF32": "TF32"}
        self.BuilderFlag = types.SimpleNamespace(**flags, GPU_FALLBACK="GPU_FALLBACK")
        self.DeviceType = types.SimpleNamespace(GPU="GPU", DLA="DLA")
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
        fake = self

        class Logger:
            WARNING, VERBOSE = "WARNING", "VERBOSE"

            def __init__(self, severity):
                fake.calls.append(("logger", severity))

        class Error:
            def __init__(self, index):
                self.index = index

            def node(self):
                return self.index

            def code(self):
                return types.SimpleNamespace(name="UNSUPPORTED_NODE")

            def desc(self):
                return f"unsupported mode {self.index}"

        class NamedError(Error):  # 10.x and later name the node; 8.6 gives its index only
            def node_name(self):
                return f"/model/Resize_{self.index}"

            def node_operator(self):
                return "Resize"

        class Parser:
            num_errors = 0 if parse_ok else 2

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                fake.calls.append(("parse", Path(path).name))
                return parse_ok

            def get_error(self, index):
                return Error(index) if major < 10 else NamedError(index)

        class Cache:
            def __init__(self, data):
                self.data = data

            def serialize(self):
                return b"timings:" + self.data

        class Config:
            def __setattr__(self, name, value):  # config.DLA_core = ..., config.builder_optimization_level = ...
                if name != "cache":
                    fake.calls.append(("set", name, value))
                object.__setattr__(self, name, value)

            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("workspace", pool, size))

            def set_flag(self, flag):
                fake.calls.append(("flag", flag))

            def clear_flag(self, flag):
                fake.calls.append(("clear_flag", flag))

            def create_timing_cache(self, data):
                fake.calls.append(("cache_in", bytes(data)))
                self.cache = Cache(bytes(data))
                return self.cache

            def set_timing_cache(self, cache, ignore_mismatch):
                fake.calls.append(("cache_set", ignore_mismatch))

            def get_timing_cache(self):
                return self.cache

            def add_optimization_profile(self, profile):
                fake.calls.append(("profile", profile.shapes))

        class Profile:
            def set_shape(self, name, low, opt, high):
                self.shapes = (name, list(low), list(opt), list(high))

        class Network:
            def get_input(self, index):
                return types.SimpleNamespace(name="images")

        class Builder:
            num_DLA_cores = dla_cores

            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("network_flags", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                fake.calls.append(("build", fake.current_device[0]))
                return b"PLAN-" + version.encode() if build_ok else None

        class Runtime:
            def __init__(self, logger):
                pass

            def __setattr__(self, name, value):
                fake.calls.append(("runtime_set", name, value))
                object.__setattr__(self, name, value)

            def deserialize_cuda_engine(self, plan):
                fake.calls.append(("load", fake.current_device[0]))
                return object() if plan else None

        self.Logger, self.OnnxParser, self.Builder, self.Runtime = Logger, Parser, Builder, Runtime

    def recorded(self, kind: str) -> list[tuple]:
        return [c for c in self.calls if c[0] == kind]


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    """Install a fake tensorrt of a given version; GPU identity and CUDA device context stubbed."""

    installed: list[FakeTensorRT] = []

    def install(version: str, **kwargs) -> FakeTensorRT:
        module = FakeTensorRT(version, **kwargs)
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        installed.append(module)
        return module

    @contextlib.contextmanager
    def on_device(index):  # cuda_runtime.on_device: which GPU is current while TensorRT builds and loads
        before = installed[-1].current_device[0]
        installed[-1].current_device[0] = index
        try:
            yield
        finally:
            installed[-1].current_device[0] = before

    monkeypatch.setattr(tensorrt_env, "gpu_identity", lambda device: dict(GPU))
    monkeypatch.setattr(cuda_runtime, "on_device", on_device)
    monkeypatch.setattr(cuda_runtime, "resolve_index", lambda device: 0 if device.index is None else device.index)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return install


def _onnx_stub(tmp_path: Path) -> Path:
    path = tmp_path / "m_fp32.onnx"
    path.write_bytes(b"not parsed by the fake")
    return path


def _build(tmp_path, precision, dynamic=False, name="m.engine", **options):
    info = ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64), batch=None if dynamic else 1, dynamic=dynamic)
    engine = tmp_path / name
    built = trt_export.build_engine(_onnx_stub(tmp_path), engine, info, precision=precision, workspace_gib=2,
                                    device=torch.device("cuda"), opt_batch=2, **options)
    return engine, built


def test_trt10_fp16_uses_weak_typing_and_the_builder_flag(fake_trt, tmp_path):
    trt = fake_trt("10.3.0")
    engine, info = _build(tmp_path, "fp16")
    assert trt.recorded("network_flags") == [("network_flags", 0)]
    assert trt.recorded("flag") == [("flag", "FP16")]
    assert trt.recorded("workspace") == [("workspace", "WORKSPACE", 2 * 2**30)]
    assert engine.read_bytes() == b"PLAN-10.3.0"
    side = read_engine_sidecar(engine)
    assert side.precision == "fp16" and side.extra["tensorrt"]["strongly_typed"] is False
    assert side.extra["tensorrt"]["builder_flags"] == ["FP16"] and side.extra["tensorrt"]["tensorrt_version"] == "10.3.0"
    assert side.extra["tensorrt"]["gpu_name"] == GPU["gpu_name"] and side.extra["tensorrt"]["compute_capability"] == "9.0"


def test_trt10_int8_adds_int8_flag_and_fp32_is_strongly_typed(fake_trt, tmp_path):
    trt = fake_trt("10.3.0")
    _build(tmp_path, "int8")
    assert [c[1] for c in trt.recorded("flag")] == ["FP16", "INT8"]
    trt.calls.clear()
    _build(tmp_path, "fp32", name="f.engine")
    assert trt.recorded("network_flags") == [("network_flags", 1 << 5)] and trt.recorded("flag") == []


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_trt11_is_always_strongly_typed_without_precision_flags(fake_trt, tmp_path, precision):
    trt = fake_trt("11.4.0.106")  # its BuilderFlag has no FP16/INT8: touching them would raise
    engine, info = _build(tmp_path, precision)
    assert trt.recorded("network_flags") == [("network_flags", 1 << 5)]
    assert trt.recorded("flag") == []
    assert info.extra["tensorrt"]["strongly_typed"] is True and info.extra["tensorrt"]["builder_flags"] == []


@pytest.mark.parametrize("version", ["10.3.0", "11.4.0.106"])
def test_fp32_engines_are_built_without_tf32(fake_trt, tmp_path, version):
    trt = fake_trt(version)
    _, info = _build(tmp_path, "fp32")
    assert trt.recorded("clear_flag") == [("clear_flag", "TF32")] and info.extra["tensorrt"]["tf32"] is False
    trt.calls.clear()
    _, info = _build(tmp_path, "fp16", name="h.engine")
    assert trt.recorded("clear_flag") == [] and info.extra["tensorrt"]["tf32"] is True


def test_timing_cache_is_written_and_reused(fake_trt, tmp_path):
    trt = fake_trt("10.3.0")
    _build(tmp_path, "fp32", name="a.engine")
    cache = trt_export.default_timing_cache(GPU["gpu_name"], "9.0", "10.3.0")
    assert cache.read_bytes() == b"timings:" and trt.recorded("cache_in") == [("cache_in", b"")]
    _build(tmp_path, "fp32", name="b.engine")
    assert trt.recorded("cache_in")[-1] == ("cache_in", b"timings:")
    assert cache.name == "timing_h100-80gb-hbm3_sm90_trt10.3.0.cache"


def test_dynamic_engine_gets_an_optimisation_profile(fake_trt, tmp_path):
    trt = fake_trt("11.4.0.106")
    _, info = _build(tmp_path, "fp16", dynamic=True)
    assert trt.recorded("profile") == [("profile", ("images", [1, 3, 64, 64], [2, 3, 64, 96], [4, 3, 64, 96]))]
    assert info.extra["tensorrt"]["profile"]["max"] == [4, 3, 64, 96]


def test_an_engine_with_only_a_free_batch_gets_a_batch_profile_at_its_size(fake_trt, tmp_path):
    """The graph of ``export --format triton --triton-backend tensorrt``: any batch, fixed height and width."""
    trt = fake_trt("10.3.0")
    info = ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64), batch=None, dynamic=False)
    trt_export.build_engine(_onnx_stub(tmp_path), tmp_path / "b.engine", info, precision="fp32",
                            device=torch.device("cuda"), opt_batch=2)
    assert trt.recorded("profile") == [("profile", ("images", [1, 3, 64, 96], [2, 3, 64, 96], [4, 3, 64, 96]))]
    frames = ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64), batch=None, io="frames",
                       source_size=(160, 120), head="argmax", layout="NHWC", color_order="BGR", outputs=["mask"])
    assert trt_export.dynamic_profile(frames, 1) == {"min": [1, 120, 160, 3], "opt": [1, 120, 160, 3],
                                                     "max": [4, 120, 160, 3]}


def test_parser_errors_are_listed_and_nothing_is_written(fake_trt, tmp_path):
    fake_trt("10.3.0", parse_ok=False)
    with pytest.raises(DronsegError) as info:
        _build(tmp_path, "fp32")
    message = str(info.value)
    assert "cannot parse" in message and "node 0 /model/Resize_0 (Resize) [UNSUPPORTED_NODE]: unsupported mode 0" in message
    assert "node 1 /model/Resize_1" in message and "\n" not in message
    assert "--opset" not in message and "operator table for TensorRT 10.3" in message  # no guessed fix
    assert not (tmp_path / "m.engine").exists() and not sidecar_path(tmp_path / "m.engine").exists()


def _onnx_with_resize(path: Path) -> Path:
    """A two-node graph whose second node is an antialiased Resize (what TensorRT's parser rejects)."""
    from onnx import TensorProto, helper, save

    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 4, 4])
    sizes = helper.make_tensor("sizes", TensorProto.INT64, [4], [1, 3, 4, 4])
    nodes = [helper.make_node("Relu", ["images"], ["r"], name="/stem/Relu"),
             helper.make_node("Resize", ["r", "", "", "sizes"], ["out"], name="/pre/Resize", mode="linear", antialias=1)]
    save(helper.make_model(helper.make_graph(nodes, "g", [x], [y], [sizes]),
                           opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_trt8_parser_errors_name_the_node_from_the_onnx_file(fake_trt, tmp_path):
    """8.6's errors carry only the node index: name, operator and attributes come from the graph itself."""
    fake_trt("8.6.1", parse_ok=False)
    parser = sys.modules["tensorrt"].OnnxParser(None, None)
    parser.get_error = lambda index: type("E", (), {"node": lambda self: 1, "code": lambda self: "ErrorCode.UNSUPPORTED_NODE",
                                                    "desc": lambda self: "Antialiasing is not supported"})()
    parser.num_errors = 1
    line = trt_export.parser_errors(parser, _onnx_with_resize(tmp_path / "g.onnx"))
    assert line == ("node 1 /pre/Resize (Resize) [ErrorCode.UNSUPPORTED_NODE]: Antialiasing is not supported "
                    "(attributes: antialias=1, mode=linear)")
    parser.get_error = lambda index: type("E", (), {"node": lambda self: -1, "code": lambda self: "ErrorCode.INVALID_GRAPH",
                                                    "desc": lambda self: "no graph"})()
    assert trt_export.parser_errors(parser, tmp_path / "missing.onnx") == "node -1 [ErrorCode.INVALID_GRAPH]: no graph"


@pytest.mark.parametrize("precision, flags", [("fp32", []), ("fp16", ["FP16"]), ("int8", ["FP16", "INT8"])])
def test_trt8_networks_are_explicit_batch_and_weakly_typed(fake_trt, tmp_path, precision, flags):
    trt = fake_trt("8.6.1")
    _, info = _build(tmp_path, precision)
    assert trt.recorded("network_flags") == [("network_flags", 1 << 0)]  # EXPLICIT_BATCH, from the enum
    assert [c[1] for c in trt.recorded("flag")] == flags and info.extra["tensorrt"]["strongly_typed"] is False
    assert info.extra["tensorrt"]["tf32"] is (precision != "fp32")


def test_trt10_leaves_the_deprecated_explicit_batch_flag_out(fake_trt, tmp_path):
    trt = fake_trt("10.3.0")
    _build(tmp_path, "fp16")
    assert trt.recorded("network_flags") == [("network_flags", 0)]


@pytest.mark.parametrize("io", ["tensors", "frames"])  # frames graphs are MatMuls at opset 17 too: the same fix
def test_trt8_refuses_an_opset_its_parser_cannot_read_before_parsing(fake_trt, tmp_path, io):
    trt = fake_trt("8.6.1")
    info = ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64), batch=1, io=io, extra={"opset": 18})
    with pytest.raises(DronsegError) as error:
        trt_export.build_engine(_onnx_stub(tmp_path), tmp_path / "m.engine", info, precision="fp16",
                                device=torch.device("cuda"))
    assert "opset 18" in str(error.value) and "reads opsets up to 17: export with --opset 17" in str(error.value)
    assert trt.recorded("parse") == [] and trt.recorded("network_flags") == []


@pytest.mark.parametrize("version", ["8.5.3.1", "8.4.1"])
def test_tensorrt_older_than_8_6_is_refused_naming_the_jetpack(fake_trt, version):
    fake_trt(version)
    with pytest.raises(BackendUnavailable) as error:
        tensorrt_env.import_tensorrt()
    message = str(error.value)
    assert f"TensorRT {version} is older than 8.6" in message and "JetPack 6.0 (TensorRT 8.6.2)" in message
    assert "\n" not in message


def test_the_engine_is_built_and_loaded_back_on_the_requested_gpu(fake_trt, tmp_path):
    trt = fake_trt("10.3.0")
    info = ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64), batch=1)
    trt_export.build_engine(_onnx_stub(tmp_path), tmp_path / "m.engine", info, precision="fp16",
                            device=torch.device("cuda", 1))
    assert trt.recorded("build") == [("build", 1)] and trt.recorded("load") == [("load", 1)]
    assert trt.current_device == [0]  # put back afterwards


def test_failed_build_names_the_workspace_and_leaves_no_file(fake_trt, tmp_path):
    fake_trt("11.4.0.106", build_ok=False)
    with pytest.raises(DronsegError, match="--workspace"):
        _build(tmp_path, "fp16")
    assert list(tmp_path.glob("*.engine*")) == []


def test_missing_tensorrt_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailable) as info:
        tensorrt_env.import_tensorrt()
    message = str(info.value)
    assert "pip install 'dronseg-edge[trt]'" in message and "[trt-cu12]" in message and "JetPack" in message and "--system-site-packages" in message


def test_engine_without_tensorrt_fails_before_any_onnx_work(monkeypatch, tiny_checkpoint, tmp_path):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(BackendUnavailable):
        export_artifact(tiny_checkpoint, fmt="engine", precision="fp16", out_dir=tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()


def test_names_and_compatibility_rules():
    assert trt_export.gpu_slug("NVIDIA H100 80GB HBM3") == "h100-80gb-hbm3"
    assert trt_export.gpu_slug("Orin") == "orin"
    assert (trt_export.engine_filename("best", "fp16", "NVIDIA GeForce RTX 4090", "8.9", "10.3.0")
            == "best_fp16_geforce-rtx-4090_sm89_trt10.3.0.engine")
    built = {"tensorrt_version": "10.3.0", **GPU}
    assert tensorrt_env.engine_mismatch(built, dict(built)) is None
    orin = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"}
    message = tensorrt_env.engine_mismatch(built, orin)
    assert "built for NVIDIA H100 80GB HBM3 (sm90) with TensorRT 10.3.0" in message and "Orin (sm87)" in message
    assert "TensorRT 11.4.0" in tensorrt_env.engine_mismatch(built, {**built, "tensorrt_version": "11.4.0"})


@pytest.mark.slow
@pytest.mark.parametrize("version, onnx_name", [("10.3.0", "tiny_fp32.onnx"), ("11.4.0.106", "tiny_fp16.onnx")])
def test_engine_export_builds_from_the_right_onnx(fake_trt, tiny_checkpoint, tmp_path, version, onnx_name):
    """fp16 engines come from the fp32 graph + flag on 10.x and from the fp16 graph on 11.x."""
    trt = fake_trt(version)
    result = export_artifact(tiny_checkpoint, fmt="engine", precision="fp16", out_dir=tmp_path, parity=False,
                             device=torch.device("cpu"))
    assert trt.recorded("parse") == [("parse", onnx_name)] and (tmp_path / onnx_name).is_file()
    assert result.path.name == f"tiny_fp16_h100-80gb-hbm3_sm90_trt{version}.engine" and result.passed
    side = json.loads(sidecar_path(result.path).read_text())
    assert side["precision"] == "fp16" and side["extra"]["tensorrt"]["onnx"] == onnx_name
    assert side["class_names"][0] == "background" and side["source_sha256"]
    assert "pending" not in sidecar_path(result.path).read_text()  # it named the engine's working name (.NAME...pending)
    again = export_artifact(tiny_checkpoint, fmt="engine", precision="fp16", out_dir=tmp_path, parity=False,
                            device=torch.device("cpu"))
    assert f"reused {onnx_name}" in again.notes


def test_an_engine_export_without_parity_does_not_blame_onnxruntime(fake_trt, tiny_checkpoint, tmp_path):
    fake_trt("10.3.0")
    made = export_artifact(tiny_checkpoint, fmt="engine", out_dir=tmp_path, parity=False, device=torch.device("cpu"))
    assert made.notes == ("built tiny_fp32.onnx",)  # not "its parity not checked: no onnxruntime": it is installed


def test_tensorrt_tests_run_only_where_a_builder_can_be_made(monkeypatch):
    from testkit import tensorrt_unusable

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert tensorrt_unusable.__wrapped__().startswith("TensorRT (`import tensorrt` fails: ModuleNotFoundError")

    def no_builder(logger):
        raise TypeError("pybind11::init(): factory function returned nullptr")

    broken = types.SimpleNamespace(__version__="10.3.0", Logger=FakeTensorRT("10.3.0").Logger, Builder=no_builder)
    broken.Logger.ERROR = "ERROR"
    monkeypatch.setitem(sys.modules, "tensorrt", broken)
    assert tensorrt_unusable.__wrapped__() == ("a TensorRT builder (tensorrt 10.3.0 imports, but trt.Builder fails: "
                                               "TypeError: pybind11::init(): factory function returned nullptr)")
    broken.Builder = FakeTensorRT("10.3.0").Builder
    assert tensorrt_unusable.__wrapped__() is None


@pytest.mark.tensorrt
@pytest.mark.gpu
@requires_tensorrt(cuda_bindings=True)
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_real_engine_passes_parity(trained_checkpoint, tmp_path, precision):
    result = export_artifact(trained_checkpoint, fmt="engine", precision=precision, out_dir=tmp_path, device="cuda")
    assert result.passed, result.report.table()
    assert result.path.suffix == ".engine" and sidecar_path(result.path).is_file()


def test_frames_graph_engine_gets_a_uint8_nhwc_profile_and_keeps_its_io_metadata(fake_trt, tmp_path):
    """An ``--io frames`` graph (uint8 NHWC frames in, uint8 class map out) builds through the same path."""
    trt = fake_trt("10.3.0")
    info = ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64), head="argmax", batch=None, dynamic=True,
                     layout="NHWC", io="frames", color_order="BGR", outputs=["mask", "confidence"])
    engine = tmp_path / "f.engine"
    trt_export.build_engine(_onnx_stub(tmp_path), engine, info, precision="fp16", device=torch.device("cuda"), opt_batch=1)
    assert trt.recorded("profile") == [("profile", ("images", [1, 64, 64, 3], [1, 64, 96, 3], [4, 1080, 1920, 3]))]
    side = read_engine_sidecar(engine)
    assert (side.io, side.layout, side.color_order, side.outputs, side.source_size) == \
        ("frames", "NHWC", "BGR", ["mask", "confidence"], None)


@pytest.mark.parametrize("version, precision, flags", [("8.6.1", "fp16", ["FP16", "GPU_FALLBACK"]),
                                                       ("10.3.0", "fp16", ["FP16", "GPU_FALLBACK"]),
                                                       ("10.3.0", "int8", ["FP16", "INT8", "GPU_FALLBACK"]),
                                                       ("11.4.1", "fp16", ["GPU_FALLBACK"])])
def test_dla_build_targets_the_core_with_gpu_fallback(fake_trt, tmp_path, version, precision, flags):
    trt = fake_trt(version, dla_cores=2)
    engine, info = _build(tmp_path, precision, dla_core=1)
    assert [c[1] for c in trt.recorded("flag")] == flags
    assert ("set", "default_device_type", "DLA") in trt.calls and ("set", "DLA_core", 1) in trt.calls
    assert trt.recorded("runtime_set") == [("runtime_set", "DLA_core", 1)]  # the check-load uses the same core
    side = read_engine_sidecar(engine).extra["tensorrt"]
    assert side["dla_core"] == 1 and side["builder_flags"] == flags and side["builder_optimization_level"] is None
    # --help said "TensorRT 10.x or 11.4.1+", though JetPack 6.0's 8.6 builds for DLA too
    assert "TensorRT 8.6, 10.x or 11.4.1+" in ExportOptions.__dataclass_fields__["dla_core"].metadata["option"].help


def test_gpu_build_sets_no_dla_and_leaves_the_optimisation_level_to_tensorrt(fake_trt, tmp_path):
    trt = fake_trt("10.3.0", dla_cores=2)
    engine, _ = _build(tmp_path, "fp16")
    assert trt.recorded("set") == [] and trt.recorded("runtime_set") == []
    side = read_engine_sidecar(engine).extra["tensorrt"]
    assert side["dla_core"] is None and side["builder_optimization_level"] is None


@pytest.mark.parametrize("version", ["10.3.0", "11.4.0.106"])
def test_builder_optimisation_level_is_set_and_recorded(fake_trt, tmp_path, version):
    trt = fake_trt(version)
    engine, _ = _build(tmp_path, "fp16", builder_opt_level=5)
    assert trt.recorded("set") == [("set", "builder_optimization_level", 5)]
    assert read_engine_sidecar(engine).extra["tensorrt"]["builder_optimization_level"] == 5


@pytest.mark.parametrize("version, cores, dla_core, message", [
    ("10.3.0", 0, 0, "sees no DLA core on this machine"),
    ("10.3.0", 2, 2, "has 2 DLA cores (0..1)"),
    ("11.0.0", 2, 0, "TensorRT 11.0.0 has no DLA"),
    ("11.1.0.5", 2, 0, "TensorRT 11.1.0.5 has no DLA"),
    ("11.4.0.106", 2, 0, "TensorRT 11.4.0.106 has no DLA"),
])
def test_dla_is_refused_where_it_cannot_run_before_parsing(fake_trt, tmp_path, version, cores, dla_core, message):
    trt = fake_trt(version, dla_cores=cores)
    with pytest.raises(DronsegError) as info:
        _build(tmp_path, "fp16", dla_core=dla_core)
    assert message in str(info.value) and "--dla-core" in str(info.value) and "\n" not in str(info.value)
    assert trt.recorded("parse") == [] and list(tmp_path.glob("*.engine*")) == []


def test_dla_engines_are_named_for_their_core():
    assert (trt_export.engine_filename("best", "fp16", "Orin", "8.7", "10.3.0", dla_core=0)
            == "best_fp16_orin_sm87_dla0_trt10.3.0.engine")
    assert trt_export.engine_filename("best", "fp16", "Orin", "8.7", "10.3.0") == "best_fp16_orin_sm87_trt10.3.0.engine"


@pytest.mark.parametrize("changes, message", [
    ({"fmt": "engine", "precision": "fp32", "dla_core": 0}, "DLA runs fp16 or int8 only"),
    ({"fmt": "engine", "precision": "fp16", "dla_core": 0, "dynamic": True}, "DLA takes fixed shapes only"),
    ({"fmt": "engine", "precision": "fp16", "dla_core": -1}, "--dla-core -1 must be a whole number, at least 0"),
    ({"fmt": "triton", "precision": "fp16", "dla_core": 0}, "--format triton is not supported"),
    ({"fmt": "engine", "builder_opt_level": 6}, "must be a whole number, from 0 to 5"),
    ({"fmt": "engine", "builder_opt_level": -1}, "must be a whole number, from 0 to 5"),
])
def test_export_options_refuse_engine_options_that_cannot_work(changes, message):
    with pytest.raises(DronsegError, match=message):
        ExportOptions(**changes)


def test_export_options_carry_engine_options_through_the_onnx_step():
    options = ExportOptions(fmt="engine", precision="fp16", dla_core="1", builder_opt_level=4.0)
    assert (options.dla_core, options.builder_opt_level) == (1, 4)
    # The fp32 ONNX graph a 10.x fp16 engine is built from keeps them (unused) without refusing fp32.
    onnx_step = dataclasses.replace(options, fmt="onnx", precision="fp32")
    assert onnx_step.dla_core == 1 and onnx_step.builder_opt_level == 4


def test_dynamic_profile_takes_the_users_shapes_and_fills_the_rest(fake_trt, tmp_path):
    """export --min-shape/--opt-shape/--max-shape (BATCHxWIDTHxHEIGHT) become TensorRT's NCHW profile."""
    trt = fake_trt("10.3.0")
    _, info = _build(tmp_path, "fp16", dynamic=True, profile={"min_shape": (1, 32, 32), "max_shape": (8, 192, 128)})
    assert trt.recorded("profile") == [("profile", ("images", [1, 3, 32, 32], [2, 3, 64, 96], [8, 3, 128, 192]))]
    assert info.extra["tensorrt"]["profile"] == {"min": [1, 3, 32, 32], "opt": [2, 3, 64, 96], "max": [8, 3, 128, 192]}


def test_frames_profile_shapes_are_nhwc_frames():
    info = ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64), head="argmax", batch=None, dynamic=True,
                     layout="NHWC", io="frames", color_order="BGR", outputs=["mask"])
    shapes = trt_export.dynamic_profile(info, 1, opt_shape=(2, 1280, 720), max_shape=(4, 3840, 2160))
    assert shapes == {"min": [1, 64, 64, 3], "opt": [2, 720, 1280, 3], "max": [4, 2160, 3840, 3]}


@pytest.mark.parametrize("profile, message", [
    ({"max_shape": (2, 64, 64)}, "--opt-shape 2x96x64 (default) is larger than --max-shape 2x64x64"),
    ({"min_shape": (4, 96, 64)}, "--min-shape 4x96x64 is larger than --opt-shape 2x96x64 (default)"),
])
def test_a_profile_that_does_not_grow_is_refused_before_building(fake_trt, tmp_path, profile, message):
    trt = fake_trt("10.3.0")
    with pytest.raises(DronsegError, match=re.escape(message)):
        _build(tmp_path, "fp16", dynamic=True, profile=profile)
    assert trt.recorded("build") == [] and not (tmp_path / "m.engine").exists()


def test_a_given_timing_cache_is_read_and_updated_in_place(fake_trt, tmp_path):
    trt = fake_trt("10.3.0")
    cache = tmp_path / "caches" / "orin.cache"
    cache.parent.mkdir()
    cache.write_bytes(b"old")
    engine, _ = _build(tmp_path, "fp16", timing_cache=cache)
    assert trt.recorded("cache_in") == [("cache_in", b"old")] and cache.read_bytes() == b"timings:old"
    assert read_engine_sidecar(engine).extra["tensorrt"]["timing_cache"] == str(cache)
    assert not trt_export.default_timing_cache(GPU["gpu_name"], "9.0", "10.3.0").exists()


@pytest.mark.parametrize("verbose, severity", [(False, "WARNING"), (True, "VERBOSE")])
def test_verbose_builds_log_at_tensorrts_verbose_severity(fake_trt, tmp_path, verbose, severity):
    trt = fake_trt("11.4.0.106")
    _build(tmp_path, "fp16", verbose=verbose)
    assert trt.recorded("logger") == [("logger", severity)]


@pytest.mark.parametrize("changes, message", [
    ({"min_shape": (1, 64, 64)}, "--min-shape shapes the profile of a --dynamic engine"),
    ({"dynamic": True, "opt_shape": (4, 320, 192), "max_shape": (2, 320, 192)},
     "--opt-shape 4x320x192 is larger than --max-shape 2x320x192"),
    ({"dynamic": True, "min_shape": (1, 640, 64), "opt_shape": (1, 320, 192)}, "--min-shape 1x640x64 is larger"),
])
def test_export_options_check_the_profile_shapes(changes, message):
    with pytest.raises(DronsegError, match=message):
        ExportOptions(fmt="engine", **changes)


def test_export_options_parse_shapes_and_refuse_a_folder_as_timing_cache(tmp_path):
    from dronseg_edge.export.options import parse_shape

    assert parse_shape("4x1280x720") == (4, 1280, 720)
    for bad in ("1280x720", "0x64x64", "ax64x64", "2x64"):
        with pytest.raises(DronsegError, match="BATCHxWIDTHxHEIGHT|is not a size"):
            parse_shape(bad)
    options = ExportOptions(fmt="engine", dynamic=True, max_shape=[8, 640, 384], timing_cache=str(tmp_path / "t.cache"))
    assert options.max_shape == (8, 640, 384) and options.timing_cache == tmp_path / "t.cache"
    # the CLI's spelling from Python: a ValueError "invalid literal for int()" for its 'x'; a short shape was taken
    assert ExportOptions(fmt="engine", dynamic=True, min_shape="1x64x64").min_shape == (1, 64, 64)
    for bad in ((1, 64), 5):
        with pytest.raises(DronsegError, match="is not a size"):
            ExportOptions(fmt="engine", dynamic=True, min_shape=bad)
    with pytest.raises(DronsegError, match="--timing-cache .* is a folder"):
        ExportOptions(fmt="engine", timing_cache=tmp_path)


@pytest.mark.slow
def test_an_engine_asked_for_another_opset_does_not_reuse_the_onnx_file_of_the_first(fake_trt, tiny_checkpoint, tmp_path):
    """TensorRT 8.6 told "export with --opset 17", and the engine path then reused the opset-18 file: the same error again."""
    export_artifact(tiny_checkpoint, opset=18, out_dir=tmp_path, parity=False, device="cpu")
    fake_trt("8.6.1")
    with pytest.raises(DronsegError, match="export with --opset 17"):
        export_artifact(tiny_checkpoint, fmt="engine", out_dir=tmp_path, parity=False, device=torch.device("cpu"))
    result = export_artifact(tiny_checkpoint, fmt="engine", opset=17, out_dir=tmp_path, parity=False,
                             device=torch.device("cpu"))
    assert result.passed and read_onnx_info(tmp_path / "tiny_fp32.onnx").extra["opset"] == 17


@pytest.mark.slow
def test_an_engine_does_not_reuse_a_frames_graph_an_older_builder_made(fake_trt, tiny_checkpoint, onnx_export,
                                                                       tmp_path):
    """An older version's frames graph (antialiased Resize, ties at 2x rounded down) has the metadata of a fresh
    export (package_version is 0.1.0 at every commit): the engine build reused it silently. It still runs."""
    import numpy as np
    import onnx

    from dronseg_edge.export import embedded  # its BUILDER_KEY is "frames_graph_builder"
    from dronseg_edge.metadata import set_onnx_metadata
    from dronseg_edge.pipeline import Segmenter

    old = Path(shutil.copy(onnx_export(tiny_checkpoint, io="frames"), tmp_path))  # test_onnx_metadata's, a fresh export
    info = read_onnx_info(old)
    info.extra.pop("frames_graph_builder", None)
    onnx.save(set_onnx_metadata(onnx.load(str(old)), info), str(old))  # as a version without the key wrote it
    with Segmenter(old, device="cpu") as segmenter:
        assert segmenter.predict(np.zeros((64, 96, 3), np.uint8)).mask.shape == (64, 96)
    assert not export_artifact(tiny_checkpoint, io="frames", out_dir=tmp_path, parity=False, device="cpu",
                               reuse=True).reused
    onnx.save(set_onnx_metadata(onnx.load(str(old)), info), str(old))
    fake_trt("10.3.0")
    made = export_artifact(tiny_checkpoint, fmt="engine", io="frames", out_dir=tmp_path, parity=False,
                           device=torch.device("cpu"))
    assert made.notes == ("exporting tiny_frames_fp32.onnx again: another version's frames graph builder made it",
                          "built tiny_frames_fp32.onnx")
    assert read_onnx_info(old).extra[embedded.BUILDER_KEY] == embedded.BUILDER_VERSION
    assert read_engine_sidecar(made.path).extra[embedded.BUILDER_KEY] == embedded.BUILDER_VERSION
