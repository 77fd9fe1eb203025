"""The suffix table: which files are checkpoints, the model-file check, and each backend's declared options."""

from __future__ import annotations

import importlib
import inspect
import os
import re

import numpy as np
import pytest

from dronseg_edge.errors import DronsegError
from dronseg_edge.runtime.base import Backend
from testkit import onnx_model
from dronseg_edge.runtime.registry import BACKENDS, CHECKPOINT_SUFFIXES, check_model_file, is_checkpoint, load_backend


def test_is_checkpoint_by_suffix_in_any_case(tmp_path):
    assert is_checkpoint("runs/x/weights/best.pt") and is_checkpoint(tmp_path / "LAST.PTH")
    assert not is_checkpoint("model.onnx") and not is_checkpoint("model.engine") and not is_checkpoint("best")
    assert not is_checkpoint("best.pt.failed")
    assert {BACKENDS[s][1] for s in CHECKPOINT_SUFFIXES} == {"TorchBackend"}


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist: pass a .pt checkpoint, .onnx file or .engine file"),
    ("folder", "is a folder: pass a .pt checkpoint"),
    ("pipe", "is not a regular file (a pipe or a device): pass a .pt checkpoint"),
    ("suffix", "is of an unknown kind (.tflite)"),
])
def test_model_file_check_is_shared_by_load_backend(case, message, tmp_path):
    path = {"missing": tmp_path / "nope.onnx", "folder": tmp_path, "suffix": tmp_path / "m.tflite",
            "pipe": tmp_path / "m.onnx"}[case]
    if case == "suffix":
        path.write_bytes(b"x")
    if case == "pipe":
        os.mkfifo(path)
    for check in (check_model_file, lambda p: load_backend(p, "cpu")):
        with pytest.raises(DronsegError) as info:
            check(path)
        assert message in str(info.value) and str(path) in str(info.value)


def test_model_file_check_returns_the_path(tiny_checkpoint):
    assert check_model_file(str(tiny_checkpoint)) == tiny_checkpoint


@pytest.mark.parametrize("module, name", sorted(set(BACKENDS.values())))
def test_declared_options_are_the_constructor_keywords(module, name):
    """bench passes only what OPTIONS lists, so the table must follow the constructor (no tensorrt needed to import)."""
    cls = getattr(importlib.import_module(module), name)
    keywords = set(inspect.signature(cls.__init__).parameters) - {"self", "path", "device"}
    assert cls.OPTIONS == keywords and isinstance(cls.OPTIONS, frozenset)
    assert Backend.OPTIONS == frozenset()


# -- --meta: metadata for an engine built elsewhere (trtexec, Polygraphy) or a foreign ONNX -------------------

def _onnx_file(path, info=None):
    """A one-node ONNX graph (images x 2 -> logits), with our metadata when ``info`` is given."""
    import onnx
    from onnx import TensorProto, helper

    from dronseg_edge.metadata import set_onnx_metadata

    shape = [1, 3, 64, 96]
    graph = helper.make_graph([helper.make_node("Add", ["images", "images"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, shape)])
    model = onnx_model(graph)
    if info is not None:
        set_onnx_metadata(model, info)
    onnx.save(model, str(path))
    return path


def _engine_without_sidecar(folder):
    from fake_tensorrt import write_engine

    from dronseg_edge.metadata import sidecar_path

    engine = write_engine(folder)
    kept = folder / "kept.engine.json"
    sidecar_path(engine).rename(kept)  # as trtexec leaves it: the plan alone
    return engine, kept


def test_engine_without_sidecar_names_meta(tmp_path):
    engine, _ = _engine_without_sidecar(tmp_path)
    with pytest.raises(DronsegError) as info:
        load_backend(engine, "cpu")
    message = str(info.value)
    assert f"no metadata file {engine.name}.json beside it: pass --meta FILE" in message
    assert "\n" not in message and "dronseg-edge export CHECKPOINT --format engine" in message


def test_meta_gives_an_engine_the_metadata_of_its_onnx_or_of_a_sidecar_json(tmp_path):
    from dronseg_edge.metadata import ModelInfo

    engine, kept = _engine_without_sidecar(tmp_path)
    onnx_file = _onnx_file(tmp_path / "source.onnx", ModelInfo(arch="deeplabv3_resnet50", input_size=(96, 64),
                                                                 precision="fp16", class_names=[str(i) for i in range(12)]))
    from_onnx = load_backend(engine, "cpu", meta=onnx_file)
    assert from_onnx.info.arch == "deeplabv3_resnet50" and from_onnx.info.class_names[0] == "0"
    assert "tensorrt" not in from_onnx.info.extra  # no build record: activate warns instead of checking
    from_json = load_backend(engine, "cpu", meta=kept)
    assert from_json.info.arch == "lraspp_mobilenet_v3_large" and from_json.info.extra["tensorrt"]["tensorrt_version"] == "10.3.0"


def test_meta_keeps_an_engines_own_build_record_for_the_compatibility_check(tmp_path):
    from fake_tensorrt import write_engine

    from dronseg_edge.metadata import ModelInfo

    engine = write_engine(tmp_path)  # with its sidecar: built with TensorRT 10.3.0 on an H100
    onnx_file = _onnx_file(tmp_path / "source.onnx", ModelInfo(arch="deeplabv3_resnet50", input_size=(96, 64),
                                                                 precision="fp16", class_names=[str(i) for i in range(12)]))
    backend = load_backend(engine, "cpu", meta=onnx_file)
    assert backend.info.arch == "deeplabv3_resnet50"  # the classes, sizes, ... of --meta
    assert backend.info.extra["tensorrt"]["tensorrt_version"] == "10.3.0"  # the sidecar's build record stays


def test_meta_for_a_foreign_onnx_is_applied(tmp_path):
    from dronseg_edge.metadata import ModelInfo

    foreign = _onnx_file(tmp_path / "foreign.onnx")
    with pytest.raises(DronsegError, match=r"foreign.onnx has no dronseg-edge metadata .* or pass --meta FILE"):
        load_backend(foreign, "cpu")
    # The one-node graph has 3 output channels: metadata for it names 3 classes.
    described = _onnx_file(tmp_path / "ours.onnx", ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64),
                                                             class_names=["a", "b", "c"], palette=[[0, 0, 0]] * 3))
    backend = load_backend(foreign, "cpu", meta=described)
    assert backend.info.input_size == (96, 64) and backend.info.batch == 1
    out = backend.infer(np.ones((1, 3, 64, 96), np.float32))  # the foreign graph runs under the metadata given
    assert out.shape == (1, 3, 64, 96) and float(out.max()) == 2.0
    other = _onnx_file(tmp_path / "other.onnx", ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64)))
    with pytest.raises(DronsegError, match="its metadata says 12 classes \\(class_names\\), but the model output logits has 3"):
        load_backend(foreign, "cpu", meta=other).activate()  # metadata of another model


@pytest.mark.parametrize("case, message", [
    ("missing", "--meta {meta} does not exist: pass the ONNX file the model was built from, or a dronseg-edge sidecar JSON"),
    ("suffix", "--meta {meta} is neither an .onnx nor a .json file"),
    ("garbage", "--meta {meta}: metadata is not valid JSON (Expecting property name enclosed in double quotes)"),
    ("other", "--meta {meta} is not a dronseg-edge metadata file"),
    ("fields", "--meta {meta} has no dronseg-edge metadata (arch, input_size missing)"),
])
def test_bad_meta_files_are_one_line_errors(case, message, tmp_path):
    meta = tmp_path / {"missing": "none.json", "suffix": "m.txt", "garbage": "g.json", "other": "o.json", "fields": "f.json"}[case]
    meta.write_text({"missing": "", "suffix": "{}", "garbage": "{", "other": '{"format": "x"}', "fields": '{"precision": "fp16"}'}[case])
    if case == "missing":
        meta.unlink()
    model = _onnx_file(tmp_path / "foreign.onnx")
    with pytest.raises(DronsegError) as info:
        load_backend(model, "cpu", meta=meta)
    assert message.format(meta=meta) in str(info.value) and "\n" not in str(info.value)


def test_meta_is_refused_for_checkpoints(tiny_checkpoint, tmp_path):
    with pytest.raises(DronsegError, match="--meta applies to .onnx and .engine files; checkpoint .* drop --meta"):
        load_backend(tiny_checkpoint, "cpu", meta=_onnx_file(tmp_path / "m.onnx"))


def test_engine_described_by_its_onnx_runs_with_a_warning_and_tensorrt_decides(tmp_path, monkeypatch, caplog):
    """No build record: the version check cannot run, so a warning says so, and deserialisation decides."""
    from fake_tensorrt import install

    from dronseg_edge.devices import Device
    from dronseg_edge.metadata import ModelInfo
    from dronseg_edge.runtime.tensorrt import TensorRTBackend

    engine, kept = _engine_without_sidecar(tmp_path)
    onnx_file = _onnx_file(tmp_path / "source.onnx", ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64)))
    _, trt = install(monkeypatch, {"gpu_name": "Orin", "capability": (8, 7)})  # not the GPU the sidecar records
    backend = load_backend(engine, Device("cuda", 0), meta=onnx_file)
    with caplog.at_level("WARNING", logger="dronseg_edge"), backend:
        out = backend.infer(np.ones((1, 3, 64, 96), np.float32))
    assert float(out.max()) == 2.0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("has no build record" in w and "could not be checked" in w for w in warnings), warnings
    with pytest.raises(DronsegError, match="was built for NVIDIA H100 80GB HBM3 .* this machine has Orin"):
        load_backend(engine, Device("cuda", 0), meta=kept).activate()  # a sidecar JSON brings its record: checked
    monkeypatch.setattr(trt.Runtime, "deserialize_cuda_engine", lambda self, plan: None)  # TensorRT refuses the plan
    with pytest.raises(DronsegError, match="TensorRT 10.3.0 cannot load engine"):
        load_backend(engine, Device("cuda", 0), meta=onnx_file).activate()


@pytest.mark.parametrize("path", ["model.pt", "model.onnx"])
def test_a_gpu_index_or_torch_device_is_checked_as_its_device_string(path):
    # Segmenter(device=0), as Ultralytics users write it: "Invalid device string: '0'" (checkpoint) or an
    # AttributeError (ONNX); a torch.device this machine lacks passed unchecked to the backend
    import torch

    from dronseg_edge.runtime.registry import resolve_device_for

    for device, name in ((0, "0"), (torch.device("cuda:0"), "cuda:0"), (torch.device("cpu"), "cpu")):
        try:
            expected = resolve_device_for(path, name)
        except DronsegError as exc:
            with pytest.raises(DronsegError, match=re.escape(str(exc))):
                resolve_device_for(path, device)
        else:
            assert resolve_device_for(path, device) == expected
