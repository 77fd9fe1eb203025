"""`export --format triton`: a Triton model repository whose config.pbtxt parses with Triton's own
protobuf schema and whose model.onnx runs like the exported file; the docs' Python client
(docs/triton_client.py) serves every variant with ONNX Runtime standing in for Triton. No Triton server runs here."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from testkit import break_onnx_classifier, mount_tmpfs
from trt_parser_rules import check_graph

from dronseg_edge.classes import CLASS_NAMES
from dronseg_edge.cli import main
from dronseg_edge.errors import DronsegError
from dronseg_edge.export import ExportOptions, artifact_path, export_artifact, triton
from dronseg_edge.export.triton import TensorSpec, config_text, trt_profile, write_model_repository
from dronseg_edge.metadata import ModelInfo, read_onnx_info, set_onnx_metadata, write_engine_sidecar
from dronseg_edge.runtime.host import preprocess_host, resize_frame

REASON = "tritonclient (Triton's model_config protobuf schema) is not installed: pip install 'tritonclient[grpc]'"
CLIENT_FILE = Path(__file__).resolve().parents[2] / "docs" / "triton_client.py"
FRAME_SIZE = (160, 120)  # (W, H) of the static frames model: 5/3 and 15/8 of the 96x64 model input
SENT = (200, 150)  # (W, H) of the frames the client sends: resized by it for the fixed-size models


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


def export_cli(checkpoint: Path, out: Path, *args) -> str:
    """``dronseg-edge export CHECKPOINT --format triton ARGS`` on the CPU; what it printed."""
    pytest.importorskip("onnxruntime")
    printed = io.StringIO()
    with pytest.raises(SystemExit) as exit_info, contextlib.redirect_stdout(printed):
        main(["export", str(checkpoint), "--format", "triton", *map(str, args), "--out", str(out), "--device", "cpu",
              "--parity-images", "2"])
    assert exit_info.value.code in (0, None)
    return printed.getvalue()


@pytest.fixture(scope="module")
def default_export(tiny_checkpoint, tmp_path_factory):
    """A plain ``export --format triton`` (fp32 tensors at the training size): (out folder, what it printed)."""
    out = tmp_path_factory.mktemp("triton_default")
    return out, export_cli(tiny_checkpoint, out)


@pytest.fixture(scope="module")
def exported_with_output(tiny_checkpoint, tmp_path_factory):
    """An fp16 --dynamic export through the CLI: (out folder, what it printed)."""
    out = tmp_path_factory.mktemp("triton")
    return out, export_cli(tiny_checkpoint, out, "--precision", "fp16", "--dynamic")


@pytest.fixture(scope="module")
def frames_export(tiny_checkpoint, tmp_path_factory):
    """An ``--io frames`` export at a fixed 160x120 frame size with the confidence output: (out folder, printed)."""
    out = tmp_path_factory.mktemp("triton_frames")
    return out, export_cli(tiny_checkpoint, out, "--io", "frames", "--source-size", "x".join(map(str, FRAME_SIZE)),
                           "--confidence")


@pytest.fixture(scope="module")
def frames_dynamic_export(tiny_checkpoint, tmp_path_factory) -> Path:
    """An ``--io frames --dynamic`` model folder (parity is the export tests' business: not run here)."""
    pytest.importorskip("onnxruntime")
    return export_artifact(tiny_checkpoint, fmt="triton", io="frames", dynamic=True, parity=False, device="cpu",
                           out_dir=tmp_path_factory.mktemp("triton_frames_dyn")).path


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


def accelerator_of(config):
    [accelerator] = config.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt"
    return accelerator.parameters


def test_a_default_export_batches_at_its_fixed_size(default_export):
    """No flags: Triton batches 1 to 4 frames of the training size (the ONNX file's batch axis is free)."""
    out, printed = default_export
    model = out / "triton" / "tiny_fp32"
    config = parse_config((model / "config.pbtxt").read_text())
    assert config.max_batch_size == 4 and config.HasField("dynamic_batching")
    [image], [logits] = config.input, config.output
    assert (image.name, image.data_type, list(image.dims)) == ("images", 11, [3, 64, 96])  # 11 = TYPE_FP32
    assert (logits.name, logits.data_type, list(logits.dims)) == ("logits", 11, [len(CLASS_NAMES), 64, 96])
    assert logits.label_filename == ""  # Triton's classification extension would label pixels: module docstring
    assert json.loads(config.parameters["class_names"].string_value) == list(CLASS_NAMES)
    [group] = config.instance_group
    assert group.kind == group.KIND_AUTO and group.count == 1  # a CPU instance on a server without GPUs
    parameters = accelerator_of(config)
    assert (parameters["trt_profile_min_shapes"], parameters["trt_profile_opt_shapes"],
            parameters["trt_profile_max_shapes"]) == ("images:1x3x64x96", "images:1x3x64x96", "images:4x3x64x96")
    served = out / "tiny_dynbatch_fp32.onnx"  # the parity-checked file the folder serves
    assert sha256(model / "1" / "model.onnx") == sha256(served)
    graph = onnx.load(str(served))
    assert [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim] == ["batch", 3, 64, 96]
    assert check_graph(graph) == []  # what ONNX Runtime's TensorRT accelerator hands TensorRT's parser
    assert "PASSED" in printed and f"parity report: {out / 'tiny_dynbatch_fp32.parity.json'}" in printed
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 96)).astype(np.float32)
    assert run_onnx(served, x).shape == (3, len(CLASS_NAMES), 64, 96)


def test_a_dynamic_fp16_config_parses_with_tritons_schema(exported):
    config = parse_config((exported / "triton" / "tiny_dyn_fp16" / "config.pbtxt").read_text())
    assert config.platform == "onnxruntime_onnx" and config.name == ""  # Triton takes the folder's name
    assert config.max_batch_size == 4 and config.HasField("dynamic_batching")
    [image] = config.input
    assert (image.name, image.data_type, list(image.dims)) == ("images", 11, [3, -1, -1])  # 11 = TYPE_FP32
    [logits] = config.output
    assert (logits.name, logits.data_type, list(logits.dims)) == ("logits", 11, [len(CLASS_NAMES), -1, -1])
    parameters = accelerator_of(config)
    assert parameters["precision_mode"] == "FP16"
    # one engine from 64x64 up to the export size (a dynamic engine's profile, export/tensorrt.py)
    assert (parameters["trt_profile_min_shapes"], parameters["trt_profile_opt_shapes"],
            parameters["trt_profile_max_shapes"]) == ("images:1x3x64x64", "images:1x3x64x96", "images:4x3x64x96")
    assert config.parameters["mean"].string_value == "0.485,0.456,0.406"
    assert config.parameters["input_size"].string_value == "96x64"


def test_a_frames_model_takes_uint8_frames_and_returns_uint8_maps(frames_export):
    out, printed = frames_export
    model = out / "triton" / "tiny_frames_src160x120_conf_fp32"
    config = parse_config((model / "config.pbtxt").read_text())
    assert config.max_batch_size == 4 and config.HasField("dynamic_batching")
    [frames] = config.input
    assert (frames.name, frames.data_type, list(frames.dims)) == ("frames", 2, [120, 160, 3])  # 2 = TYPE_UINT8
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("mask", 2, [120, 160]), ("confidence", 2, [120, 160])]
    assert (config.parameters["input_layout"].string_value, config.parameters["frame_size"].string_value) == \
        ("NHWC BGR uint8", "160x120")
    assert "mean" not in config.parameters  # the graph normalises: nothing for the client to do
    parameters = accelerator_of(config)
    assert parameters["trt_profile_max_shapes"] == "frames:4x120x160x3"
    served = out / "tiny_dynbatch_frames_src160x120_conf_fp32.onnx"
    assert "PASSED" in printed and f"parity report: {served.with_name(served.stem + '.parity.json')}" in printed
    assert check_graph(onnx.load(str(served))) == []


def test_a_dynamic_frames_model_takes_frames_of_any_size(frames_dynamic_export):
    config = parse_config((frames_dynamic_export / "config.pbtxt").read_text())
    assert frames_dynamic_export.name == "tiny_dyn_frames_fp32" and config.max_batch_size == 4
    assert [(t.name, list(t.dims)) for t in (*config.input, *config.output)] == [("frames", [-1, -1, 3]), ("mask", [-1, -1])]
    parameters = accelerator_of(config)
    # up to 1920x1080 frames (export/tensorrt.FRAMES_MAX_SIZE), as a dynamic frames engine
    assert (parameters["trt_profile_min_shapes"], parameters["trt_profile_max_shapes"]) == \
        ("frames:1x64x64x3", "frames:4x1080x1920x3")
    assert config.parameters["frame_size"].string_value == "any"
    assert check_graph(onnx.load(str(frames_dynamic_export / "1" / "model.onnx"))) == []


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
    config = parse_config((second / "config.pbtxt").read_text())
    assert config.max_batch_size == 16 and accelerator_of(config)["trt_profile_max_shapes"] == "images:16x3x64x96"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging or swapped-out folder left
    assert [p.name for p in repository.iterdir()] == ["tiny"]


def test_two_exports_publishing_the_same_model_at_once_both_succeed(exported, tmp_path, monkeypatch):
    """Two `export --format triton` of one checkpoint in parallel (a fleet script): the other export put its
    model folder in place after this one found none there, and this one's rename failed with ENOTEMPTY, a traceback."""
    repository, rename, started = tmp_path / "repo", os.rename, []

    def another_export_first(src, dst):
        if not started and Path(dst) == repository / "tiny":
            started.append(True)
            write_model_repository(exported / "tiny_dyn_fp16.onnx", repository, "tiny", max_batch=8)
        rename(src, dst)

    monkeypatch.setattr(triton.os, "rename", another_export_first)
    model = write_model_repository(exported / "tiny_dyn_fp16.onnx", repository, "tiny", max_batch=16)
    assert started and parse_config((model / "config.pbtxt").read_text()).max_batch_size == 16  # the last one stays
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging or swapped-out folder left
    assert [p.name for p in repository.iterdir()] == ["tiny"]


def test_artifact_path_of_a_triton_export(tiny_checkpoint, tmp_path):
    assert artifact_path(tiny_checkpoint, fmt="triton", out_dir=tmp_path) == tmp_path / "triton" / "tiny_fp32"
    assert artifact_path(tiny_checkpoint, fmt="triton", precision="int8", head="argmax", out_dir=tmp_path) == \
        tmp_path / "triton" / "tiny_argmax_int8"
    # the file a Triton model serves has a free batch axis; its model folder's name leaves that out
    assert ExportOptions(fmt="triton").dynamic_batch and not ExportOptions(fmt="triton", dynamic=True).dynamic_batch
    assert artifact_path(tiny_checkpoint, fmt="onnx", dynamic_batch=True, out_dir=tmp_path) == tmp_path / "tiny_dynbatch_fp32.onnx"
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
    parameters = accelerator_of(config)
    assert parameters["precision_mode"] == "INT8" and parameters["max_workspace_size_bytes"] == str(1 << 30)
    assert not any(key.startswith("trt_profile") for key in parameters)  # every shape fixed: nothing to profile


def test_a_line_break_in_the_files_name_leaves_the_config_readable():
    # the name went into the first comment as it was: "best\nv2.onnx" started a line Triton refused to parse
    info = ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64), precision="fp32", head="argmax", batch=1)
    text = config_text(info, [TensorSpec("images", "TYPE_FP32", (1, 3, 64, 96))], [TensorSpec("mask", "TYPE_UINT8", (1, 64, 96))],
                       platform="onnxruntime_onnx", source=Path("best\nv2.onnx"), max_batch=4, workspace_gib=1)
    assert parse_config(text).max_batch_size == 0 and "from best v2.onnx" in text.splitlines()[0]


def test_a_graph_that_contradicts_its_metadata_gets_no_model_folder(default_export, tmp_path):
    """The profile comes from the metadata (as a dynamic engine's): a graph whose fixed dims differ is refused."""
    info = ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64), batch=None)
    assert trt_profile(info, TensorSpec("images", "TYPE_FP32", (-1, 3, 64, 96)), max_batch=8, opt_batch=2,
                       source=Path("x.onnx"))["trt_profile_opt_shapes"] == "images:2x3x64x96"
    graph = onnx.load(str(default_export[0] / "tiny_dynbatch_fp32.onnx"))
    set_onnx_metadata(graph, dataclasses.replace(read_onnx_info(default_export[0] / "tiny_dynbatch_fp32.onnx"),
                                                 input_size=(128, 64)))  # an edited file: its graph takes 96x64
    edited = tmp_path / "edited.onnx"
    onnx.save(graph, str(edited))
    with pytest.raises(DronsegError, match=r"edited.onnx: input 'images' has dims \[-1, 3, 64, 96\], but its metadata "
                                           r"describes \[1, 3, 64, 128\] \(batch, size, io\): re-export it"):
        write_model_repository(edited, tmp_path / "repo", "edited")
    assert list((tmp_path / "repo").iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["edited.onnx", "repo"]


def test_an_onnx_file_that_fails_parity_gets_no_model_folder(default_export, tiny_checkpoint, tmp_path, monkeypatch):
    exported = default_export[0] / "tiny_dynbatch_fp32.onnx"  # its graph, broken, as the one written this time
    monkeypatch.setattr("dronseg_edge.export.artifact._write_onnx",
                        lambda model, dest, *args: break_onnx_classifier(exported, dest) and ())
    made = export_artifact(tiny_checkpoint, fmt="triton", device="cpu", out_dir=tmp_path, parity_images=1)
    assert not made.passed and made.path.name == "tiny_dynbatch_fp32.onnx.failed" and made.path.is_file()
    assert not (tmp_path / "triton").exists()


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
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU  # a plan cannot run on a CPU
    onnx_file.write_bytes(b"not a graph")
    with pytest.raises(DronsegError, match="cannot read .*tiny_dyn_fp16.onnx as an ONNX graph .*: re-export it"):
        write_model_repository(engine, tmp_path / "repo", "again")
    value = onnx.helper.make_tensor_value_info("images", onnx.TensorProto.COMPLEX64, [1])
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [value], [value])), str(onnx_file))
    with pytest.raises(DronsegError, match="tensor 'images' has ONNX element type 14, which Triton has no data type for"):
        write_model_repository(engine, tmp_path / "repo", "again")
    onnx_file.unlink()
    with pytest.raises(DronsegError, match="the ONNX file it was built from"):
        write_model_repository(engine, tmp_path / "repo", "again")
    with pytest.raises(DronsegError, match=r"made from an .onnx file or an .engine, not '.pt'"):
        write_model_repository(tmp_path / "best.pt", tmp_path / "repo", "again")


@pytest.mark.parametrize("config", [b'platform: "pytorch_libtorch"\n', b'# mod\xe8le (Latin-1)\nplatform: "pytorch_libtorch"\n'])
def test_someone_elses_model_folder_is_not_replaced(exported, tmp_path, config):
    theirs = tmp_path / "repo" / "tiny_dyn_fp16"
    (theirs / "1").mkdir(parents=True)
    (theirs / "config.pbtxt").write_bytes(config)
    with pytest.raises(DronsegError, match="not a model folder written by dronseg-edge"):
        write_model_repository(exported / "tiny_dyn_fp16.onnx", tmp_path / "repo", "tiny_dyn_fp16")
    assert (theirs / "config.pbtxt").read_bytes() == config
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging folder left behind



def test_a_repository_on_another_file_system_is_one_line(exported, tmp_path):
    """triton/ a mount point (or a link) onto another file system: the folder staged beside it cannot be renamed in."""
    with mount_tmpfs(tmp_path / "triton") as repository:
        with pytest.raises(DronsegError, match=rf"^{re.escape(str(repository))} is a link or mount point onto another "
                                               rf"file system: .* pass an --out whose triton/ is a plain folder"):
            write_model_repository(exported / "tiny_dyn_fp16.onnx", repository, "tiny_dyn_fp16")
        assert list(repository.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["triton"]  # the staged folder removed

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


# -- the docs' Python client (docs/triton_client.py), ONNX Runtime standing in for Triton -------------------

@pytest.fixture(scope="module")
def client():
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason=REASON)
    spec = importlib.util.spec_from_file_location("triton_client", CLIENT_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def variants(default_export, exported_with_output, frames_export, frames_dynamic_export) -> dict[str, Path]:
    return {"tensors": default_export[0] / "triton" / "tiny_fp32",
            "tensors_dynamic": exported_with_output[0] / "triton" / "tiny_dyn_fp16",
            "frames": frames_export[0] / "triton" / "tiny_frames_src160x120_conf_fp32",
            "frames_dynamic": frames_dynamic_export}


def sent_frames(count: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [cv2.GaussianBlur(rng.integers(0, 256, (SENT[1], SENT[0], 3), dtype=np.uint8), (9, 9), 0) for _ in range(count)]


# variant -> (the class map's (H, W), output names): fixed-size models answer at their size, dynamic ones at the frame's
EXPECTED = {"tensors": ((64, 96), ["logits"]), "tensors_dynamic": ((64, 96), ["logits"]),
            "frames": (FRAME_SIZE[::-1], ["mask", "confidence"]), "frames_dynamic": (SENT[::-1], ["mask"])}


@pytest.mark.parametrize("variant", EXPECTED)
def test_the_docs_client_serves_every_variant(client, variants, variant):
    """The request is built from config.pbtxt alone and is what the package itself would feed the file."""
    folder, frames = variants[variant], sent_frames()
    config, outputs = client.infer_onnxruntime(folder, frames)
    client.check_outputs(config, outputs, len(frames))
    (height, width), names = EXPECTED[variant]
    assert list(outputs) == names
    assert client.class_maps(config, outputs).shape == (2, height, width)
    name, sent = client.make_input(config, frames)
    info = read_onnx_info(folder / "1" / "model.onnx")
    if info.io == "tensors":  # the package's own host pre-processing (INTER_AREA shrink, RGB, mean/std)
        assert name == "images" and sent.dtype == np.float32
        np.testing.assert_allclose(sent, preprocess_host(frames, info), rtol=0, atol=1e-5)
    elif info.source_size is not None:  # the frame size the graph was made for; it does the rest itself
        assert name == "frames" and sent.dtype == np.uint8
        np.testing.assert_array_equal(sent, np.stack([resize_frame(f, *info.source_size) for f in frames]))
    else:
        np.testing.assert_array_equal(sent, np.stack(frames))


def test_the_client_enlarges_small_frames_as_the_package_does(client, variants):
    # Frames below the model's size: enlarged in float and rounded, as resize_frame and the graphs do (OpenCV's
    # uint8 bilinear works in fixed point: 12 % of values one level off)
    config = client.read_config(variants["frames"])
    small = [cv2.resize(frame, (120, 90), interpolation=cv2.INTER_AREA) for frame in sent_frames()]
    _, sent = client.make_input(config, small)
    np.testing.assert_array_equal(sent, np.stack([resize_frame(f, *FRAME_SIZE) for f in small]))


def test_the_client_refuses_what_the_config_does_not_declare(client, variants):
    config = client.read_config(variants["frames"])
    _, outputs = client.infer_onnxruntime(variants["frames"], sent_frames(1))
    with pytest.raises(ValueError, match=r"'confidence' is declared but did not come back"):
        client.check_outputs(config, {"mask": outputs["mask"]}, 1)
    with pytest.raises(ValueError, match=r"output 'mask' is float32 \[1, 120, 160\], but the config declares TYPE_UINT8"):
        client.check_outputs(config, {**outputs, "mask": outputs["mask"].astype(np.float32)}, 1)
    with pytest.raises(ValueError, match=r"output 'mask' is uint8 \[1, 120, 160\], but the config declares TYPE_UINT8 \[2, 120"):
        client.check_outputs(config, outputs, 2)
    with pytest.raises(ValueError, match="5 frames: this model takes at most 4 per request"):
        client.make_input(config, sent_frames(5))


def test_the_client_program_writes_class_maps(client, variants, tmp_path, capsys):
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), sent_frames(1)[0])
    client.main([str(variants["frames_dynamic"]), str(image), "--onnxruntime"])
    mask = cv2.imread(str(tmp_path / "frame.mask.png"), cv2.IMREAD_UNCHANGED)
    assert mask.shape == (SENT[1], SENT[0]) and int(mask.max()) < len(CLASS_NAMES)
    printed = capsys.readouterr().out
    assert printed.startswith(f"{image}: {SENT[0]}x{SENT[1]} class map, classes ")
    assert all(CLASS_NAMES[c] in printed for c in np.unique(mask))



def test_the_client_program_says_when_a_class_map_cannot_be_written(client, variants, tmp_path, capsys):
    """cv2.imwrite returns False (no error) where it cannot write: the client said 'wrote frame.mask.png', exit 0."""
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), sent_frames(1)[0])
    (tmp_path / "frame.mask.png").mkdir()  # in the way, as a read-only folder of frames would be
    with pytest.raises(SystemExit) as exit_info:
        client.main([str(variants["frames_dynamic"]), str(image), "--onnxruntime"])
    assert str(exit_info.value.code).startswith(f"error: cannot write {tmp_path / 'frame.mask.png'}: ")
    assert "wrote" not in capsys.readouterr().out


def test_the_client_serves_a_folder_exported_before_the_class_names_parameter(client, variants, tmp_path, capsys):
    # Exports of 2026-11-28..12-06 wrote no class_names parameter: the client stopped with KeyError 'class_names'
    old = shutil.copytree(variants["tensors"], tmp_path / "old")
    config = old / "config.pbtxt"
    config.write_text("".join(line for line in config.read_text().splitlines(True) if '"class_names"' not in line))
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), sent_frames(1)[0])
    client.main([str(old), str(image), "--onnxruntime"])
    assert "class map, classes class " in capsys.readouterr().out


def test_the_client_program_says_what_is_wrong_in_one_line(client, variants, tmp_path):
    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), sent_frames(1)[0])
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), sent_frames(1)[0][:64, :80])
    plan = shutil.copytree(variants["tensors"], tmp_path / "plan")  # a TensorRT plan's folder: no model.onnx
    (plan / "1" / "model.onnx").rename(plan / "1" / "model.plan")
    edited = shutil.copytree(variants["tensors"], tmp_path / "edited")  # an edit of triton.md's gone wrong
    (edited / "config.pbtxt").write_text((edited / "config.pbtxt").read_text().replace("dynamic_batching { }", "{"))
    for args, message in (([variants["frames"], *[image] * 5], "error: 5 frames: this model takes at most 4 per request"),
                          ([variants["frames_dynamic"], image, small], "error: frames of different sizes: one request is "
                                                                       "one tensor, send them separately"),
                          ([variants["frames"].parent, image], "error: [Errno 2] No such file or directory: "),
                          ([plan, image], f"error: {plan / '1' / 'model.onnx'} does not exist: --onnxruntime runs"),
                          ([edited, image], f"error: {edited / 'config.pbtxt'} is not a model configuration Triton")):
        with pytest.raises(SystemExit) as exit_info:
            client.main([*map(str, args), "--onnxruntime"])
        assert str(exit_info.value.code).startswith(message)


def test_the_client_program_refuses_two_frames_one_mask_name_and_an_unnamed_class(client, variants, tmp_path, monkeypatch):
    for name in ("a.png", "a.jpg"):
        cv2.imwrite(str(tmp_path / name), sent_frames(1)[0])
    with pytest.raises(SystemExit) as exit_info:  # a.jpg's a.mask.png replaced a.png's
        client.main([str(variants["frames_dynamic"]), str(tmp_path / "a.png"), str(tmp_path / "a.jpg"), "--onnxruntime"])
    assert str(exit_info.value.code).endswith("would both write " + str(tmp_path / "a.mask.png") + ": rename one")
    monkeypatch.setattr(client, "class_names", lambda config: ["only"])  # a traceback, outside the try
    with pytest.raises(SystemExit) as exit_info:
        client.main([str(variants["frames_dynamic"]), str(tmp_path / "a.png"), "--onnxruntime"])
    assert str(exit_info.value.code).startswith("error: class index ")

class _Refused:
    """tritonclient.http where no server listens at the URL."""
    InferenceServerException = type("InferenceServerException", (Exception,), {})

    class InferenceServerClient:
        def __init__(self, url):
            pass

        def get_model_config(self, model):
            raise ConnectionRefusedError(111, "Connection refused")


@pytest.mark.parametrize("http, message", [
    (None, "error: a server is asked through tritonclient's HTTP client: pip install 'tritonclient[http]'"),
    (_Refused, "error: Triton at localhost:8000 ([Errno 111] Connection refused): check --url (host:port, no http://), "
               "that the server runs and that it serves tiny_fp32"),
])
def test_the_client_program_without_tritonclients_http_part_or_a_server_is_one_line(client, tmp_path, monkeypatch, http,
                                                                                      message):
    """Both were tracebacks (a RuntimeError from tritonclient installed without [http], a ConnectionRefusedError)."""
    monkeypatch.setitem(sys.modules, "tritonclient.http", http)
    cv2.imwrite(str(tmp_path / "a.png"), sent_frames(1)[0])
    with pytest.raises(SystemExit) as exit_info:
        client.main(["tiny_fp32", str(tmp_path / "a.png")])
    assert exit_info.value.code == message


def test_the_docs_show_lines_of_the_client_itself():
    """docs/triton.md's excerpt cannot drift from docs/triton_client.py, which the tests above run."""
    text = (CLIENT_FILE.parent / "triton.md").read_text()
    block = text.split("<!-- triton-client-excerpt -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    source = {line.strip() for line in CLIENT_FILE.read_text().splitlines()}
    lines = [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]
    assert len(lines) >= 6 and [line for line in lines if line not in source] == []
