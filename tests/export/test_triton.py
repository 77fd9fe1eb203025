"""`export --format triton`: a Triton model repository whose config.pbtxt parses with Triton's own
protobuf schema and whose model.onnx runs like the exported file. No Triton server runs here."""

from __future__ import annotations

import contextlib
import hashlib
import io
from pathlib import Path

import numpy as np
import pytest

from dronseg_edge.classes import CLASS_NAMES
from dronseg_edge.cli import main
from dronseg_edge.errors import DronsegError
from dronseg_edge.export import ExportOptions, artifact_path
from dronseg_edge.export.triton import TensorSpec, config_text, write_model_repository
from dronseg_edge.metadata import ModelInfo, write_engine_sidecar

REASON = "tritonclient (Triton's model_config protobuf schema) is not installed: pip install 'tritonclient[grpc]'"


def parse_config(text: str):
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason=REASON)
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def exported_with_output(tiny_checkpoint, tmp_path_factory):
    """An fp16 --dynamic export through the CLI: (out folder, what it printed)."""
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("triton")
    printed = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(printed):
        main(["export", str(tiny_checkpoint), "--format", "triton", "--precision", "fp16", "--dynamic", "--out", str(out),
              "--device", "cpu", "--parity-images", "2"])
    assert exit_info.value.code in (0, None)
    return out, printed.getvalue()


@pytest.fixture
def exported(exported_with_output):
    return exported_with_output[0]


def test_the_repository_layout(exported):
    model = exported / "triton" / "tiny_dyn_fp16"
    assert sorted(p.relative_to(model).as_posix() for p in model.rglob("*")) == [
        "1", "1/model.onnx", "config.pbtxt", "labels.txt"]
    assert (exported / "tiny_dyn_fp16.onnx").is_file() and (exported / "tiny_dyn_fp16.parity.json").is_file()
    # the parity-checked file, byte for byte; nothing temporary left beside the repository
    assert sha256(model / "1" / "model.onnx") == sha256(exported / "tiny_dyn_fp16.onnx")
    assert sorted(p.name for p in exported.iterdir() if p.name.startswith(".")) == []
    assert (model / "labels.txt").read_text().splitlines() == list(CLASS_NAMES)


def test_a_dynamic_fp16_config_parses_with_tritons_schema(exported):
    config = parse_config((exported / "triton" / "tiny_dyn_fp16" / "config.pbtxt").read_text())
    assert config.platform == "onnxruntime_onnx" and config.name == ""  # Triton takes the folder's name
    assert config.max_batch_size == 4 and config.HasField("dynamic_batching")
    [image] = config.input
    assert (image.name, image.data_type, list(image.dims)) == ("images", 11, [3, -1, -1])  # 11 = TYPE_FP32
    [logits] = config.output
    assert (logits.name, logits.data_type, list(logits.dims)) == ("logits", 11, [len(CLASS_NAMES), -1, -1])
    assert logits.label_filename == "labels.txt"
    [group] = config.instance_group
    assert group.kind == group.KIND_GPU and group.count == 1
    [accelerator] = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"
    assert config.parameters["mean"].string_value == "0.485,0.456,0.406"
    assert config.parameters["input_size"].string_value == "96x64"


def test_the_repository_model_runs_like_the_exported_file(exported):
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 128)).astype(np.float32)  # another batch and size
    served = run_onnx(exported / "triton" / "tiny_dyn_fp16" / "1" / "model.onnx", x)
    assert served.shape == (2, len(CLASS_NAMES), 64, 128)
    np.testing.assert_array_equal(served, run_onnx(exported / "tiny_dyn_fp16.onnx", x))


def test_the_cli_names_the_parity_report_the_repository_and_the_server_command(exported_with_output):
    out_dir, printed = exported_with_output
    assert "PASSED" in printed and f"parity report: {out_dir / 'tiny_dyn_fp16.parity.json'}" in printed
    assert f"the Triton model repository {out_dir / 'triton' / 'tiny_dyn_fp16'}" in printed
    assert f"tritonserver --model-repository {out_dir / 'triton'}" in printed


def test_a_new_export_replaces_its_own_model_folder(exported, tmp_path):
    repository = tmp_path / "repo"
    first = write_model_repository(exported / "tiny_dyn_fp16.onnx", repository, "tiny")
    (first / "stale.txt").write_text("from the first export")
    second = write_model_repository(exported / "tiny_dyn_fp16.onnx", repository, "tiny", max_batch=16)
    assert second == first and not (second / "stale.txt").exists()
    assert parse_config((second / "config.pbtxt").read_text()).max_batch_size == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging or swapped-out folder left
    assert [p.name for p in repository.iterdir()] == ["tiny"]


def test_artifact_path_of_a_triton_export(tiny_checkpoint, tmp_path):
    assert artifact_path(tiny_checkpoint, fmt="triton", out_dir=tmp_path) == tmp_path / "triton" / "tiny_fp32"
    assert artifact_path(tiny_checkpoint, fmt="triton", precision="int8", head="argmax", out_dir=tmp_path) == \
        tmp_path / "triton" / "tiny_argmax_int8"
    with pytest.raises(DronsegError, match="--triton-backend 'torch'"):
        ExportOptions(fmt="triton", triton_backend="torch")


def test_a_static_argmax_model_has_no_batching_and_full_dims():
    info = ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64), precision="int8", head="argmax", batch=2)
    text = config_text(info, [TensorSpec("images", "TYPE_FP32", (2, 3, 64, 96))], [TensorSpec("mask", "TYPE_UINT8", (2, 64, 96))],
                       platform="onnxruntime_onnx", source=Path("best_argmax_b2_int8.onnx"), max_batch=4, workspace_gib=1)
    config = parse_config(text)
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [2, 3, 64, 96]
    assert list(config.output[0].dims) == [2, 64, 96] and config.output[0].data_type == 2  # 2 = TYPE_UINT8
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.parameters["precision_mode"] == "INT8"
    assert accelerator.parameters["max_workspace_size_bytes"] == str(1 << 30)


def test_an_engine_repository_serves_the_plan(exported, tmp_path):
    """From an .engine and its sidecar (a stand-in file: no TensorRT here): model.plan, the profile's batch."""
    onnx_file = tmp_path / "tiny_dyn_fp16.onnx"
    onnx_file.write_bytes((exported / "tiny_dyn_fp16.onnx").read_bytes())
    engine = tmp_path / "tiny_dyn_fp16_h100_sm90_trt10.3.0.engine"
    engine.write_bytes(b"not really a plan")
    info = ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64), precision="fp16", batch=None, dynamic=True,
                     extra={"tensorrt": {"onnx": onnx_file.name, "profile": {"max": [8, 3, 64, 96]}}})
    write_engine_sidecar(engine, info)
    model = write_model_repository(engine, tmp_path / "repo", "tiny_dyn_fp16_plan")
    assert (model / "1" / "model.plan").read_bytes() == b"not really a plan"
    config = parse_config((model / "config.pbtxt").read_text())
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 8
    assert not config.HasField("optimization")  # the plan is already a TensorRT engine
    onnx_file.unlink()
    with pytest.raises(DronsegError, match="the ONNX file it was built from"):
        write_model_repository(engine, tmp_path / "repo", "again")


def test_someone_elses_model_folder_is_not_replaced(exported, tmp_path):
    theirs = tmp_path / "repo" / "tiny_dyn_fp16"
    (theirs / "1").mkdir(parents=True)
    (theirs / "config.pbtxt").write_text('platform: "pytorch_libtorch"\n')
    with pytest.raises(DronsegError, match="not a model folder written by dronseg-edge"):
        write_model_repository(exported / "tiny_dyn_fp16.onnx", tmp_path / "repo", "tiny_dyn_fp16")
    assert (theirs / "config.pbtxt").read_text() == 'platform: "pytorch_libtorch"\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging folder left behind


def run_cli(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main([*map(str, args)])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def test_a_plan_repository_needs_tensorrt(tiny_checkpoint, tmp_path, capsys):
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here: the missing-TensorRT message cannot be shown")
    except (ImportError, OSError):
        pass
    code, out, err = run_cli(capsys, "export", tiny_checkpoint, "--format", "triton", "--triton-backend", "tensorrt",
                             "--out", tmp_path, "--device", "cpu")
    assert code == 3 and "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith("error: --triton-backend tensorrt builds model.plan here") and "--triton-backend onnxruntime" in line
    assert list(tmp_path.iterdir()) == []  # failed before any export work


def test_triton_backend_belongs_to_format_triton(tiny_checkpoint, tmp_path, capsys):
    code, _out, err = run_cli(capsys, "export", tiny_checkpoint, "--triton-backend", "tensorrt", "--out", tmp_path)
    assert code == 2 and err.strip() == ("error: --triton-backend applies to --format triton only, not --format onnx: "
                                         "drop it or add --format triton")
