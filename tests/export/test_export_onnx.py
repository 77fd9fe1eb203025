"""fp32 ONNX export of a trained checkpoint: file, metadata, heads, dynamic shapes, parity, and a broken file."""

from __future__ import annotations

import json
import logging
import shutil
import sys

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import TensorProto

from dronseg_edge.checkpoint import load_checkpoint, model_from_checkpoint
from dronseg_edge.errors import DronsegError
from dronseg_edge.export import export_artifact
from dronseg_edge.export.onnx import check_opset, export_onnx
from dronseg_edge.metadata import ModelInfo, read_onnx_info, sha256_file
from dronseg_edge.models import SegmentationNet, build_model
from testkit import TINY_SIZE, sabotage_onnx_export, write_scenes


def dims(value_info) -> list:
    return [d.dim_value or d.dim_param for d in value_info.type.tensor_type.shape.dim]


@pytest.fixture(scope="module")
def fp32_export(trained_checkpoint):
    return export_artifact(trained_checkpoint, device="cpu")


def test_fp32_export_lands_in_the_run_folder_with_its_metadata(fp32_export, trained_checkpoint):
    run = trained_checkpoint.parent.parent
    assert fp32_export.path == run / "export" / "best_fp32.onnx" and fp32_export.passed
    graph = onnx.load(str(fp32_export.path))
    onnx.checker.check_model(graph, full_check=True)
    assert [i.name for i in graph.graph.input] == ["images"] and dims(graph.graph.input[0]) == [1, 3, 64, 96]
    assert [o.name for o in graph.graph.output] == ["logits"] and dims(graph.graph.output[0]) == [1, 12, 64, 96]
    info = read_onnx_info(fp32_export.path)
    assert info.input_size == (96, 64) and info.precision == "fp32" and info.head == "logits"
    assert info.batch == 1 and not info.dynamic and info.class_names[-1] == "sky" and len(info.palette) == 12
    assert info.source_sha256 == sha256_file(trained_checkpoint)
    assert info.extra["exporter"].startswith("torchscript (torch ") and info.extra["opset"] == 17
    assert info.extra["source_checkpoint"] == str(trained_checkpoint.resolve())


def test_fp32_export_passes_parity_on_the_validation_split(fp32_export):
    report = fp32_export.report
    assert report.passed and report.agreement >= 0.999
    assert report.difference_picture is None and not fp32_export.path.with_name("best_fp32.parity.png").exists()
    assert report.data_source.startswith("validation split of") and report.images == 8
    # miou_delta is in points. Where every pixel agrees the scores are equal; a near-tie pixel that rounding flips on
    # another processor (here the nearest tie is 6e-5 away, the fp32 paths 6e-6 apart) moves mIoU by up to ~0.1 point
    # (a person is 21 pixels): a bound of 0.01 point failed on one flip, which the 0.1 % agreement bound allows.
    assert report.ground_truth is not None and abs(report.miou_delta) < 0.5
    assert report.agreement < 1 or report.miou_delta == 0
    assert report.outputs[0].abs_max < 1e-3 and report.outputs[0].cosine_min > 0.99999
    saved = json.loads(fp32_export.path.with_name("best_fp32.parity.json").read_text())
    assert saved["status"] == "PASSED" and saved["candidate"] == str(fp32_export.path)
    assert "CPUExecutionProvider" in saved["candidate_provider"]


def test_argmax_head_returns_a_uint8_class_map_and_passes_parity(trained_checkpoint, tmp_path):
    result = export_artifact(trained_checkpoint, head="argmax", out_dir=tmp_path, device="cpu")
    assert result.path.name == "best_argmax_fp32.onnx" and result.passed
    output = onnx.load(str(result.path)).graph.output[0]
    assert output.name == "mask" and output.type.tensor_type.elem_type == TensorProto.UINT8
    assert dims(output) == [1, 64, 96]
    assert result.report.outputs[0].name == "mask" and result.report.agreement >= 0.999


def test_dynamic_export_runs_other_batches_and_sizes(trained_checkpoint, export_result):
    result = export_result(trained_checkpoint, dynamic=True)  # test_graph_consumers's tensors_dynamic: one export
    assert result.path.name == "best_dyn_fp32.onnx" and result.report is None
    assert any(note.startswith("dynamic shapes verified at 2x3x") for note in result.notes)
    info = read_onnx_info(result.path)
    assert info.dynamic and info.batch is None
    net = SegmentationNet(model_from_checkpoint(load_checkpoint(trained_checkpoint))).eval()
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 128, 160)
    got = session.run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        expected = net(x).numpy()
    assert got.shape == (3, 12, 128, 160) and np.abs(got - expected).max() < 1e-3


@pytest.mark.slow
def test_dynamic_export_of_deeplabv3_with_aspp_pooling(tmp_path):
    """ASPP's AdaptiveAvgPool2d + interpolate to the input size is the known dynamic-shape trap (docs/facts.md#export-pitfalls)."""
    from dronseg_edge.checkpoint import model_state, save_checkpoint
    from dronseg_edge.models import build_model

    torch.manual_seed(0)
    model = build_model("deeplabv3_mobilenet_v3_large").eval()
    ckpt = save_checkpoint(tmp_path / "dl.pt", model_state(model, "deeplabv3_mobilenet_v3_large", (96, 64)))
    result = export_artifact(ckpt, dynamic=True, out_dir=tmp_path, device="cpu", parity=False)
    assert any(note.startswith("dynamic shapes verified") for note in result.notes)


@pytest.mark.slow
def test_dynamo_exporter_also_works(trained_checkpoint, tmp_path):
    """Where torch has dropped the TorchScript exporter the dynamo one is used; it must give the same model."""
    pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript")
    model = model_from_checkpoint(load_checkpoint(trained_checkpoint))
    info = ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64))
    path = export_onnx(model, tmp_path / "dynamo.onnx", info, exporter="dynamo")
    assert read_onnx_info(path).extra["exporter"].startswith("dynamo (") and info.extra["opset"] == 18
    assert onnx.load(str(path)).ir_version == 8  # not the exporter's newest: onnxruntime 1.17 reads up to 9
    x = torch.randn(1, 3, 64, 96)
    got = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        expected = SegmentationNet(model).eval()(x).numpy()
    assert np.abs(got - expected).max() < 1e-3


def test_broken_artifact_fails_parity_and_never_replaces_a_good_file(fp32_export, trained_checkpoint, tmp_path, monkeypatch):
    good = tmp_path / "best_fp32.onnx"
    shutil.copy(fp32_export.path, good)
    before = good.read_bytes()
    sabotage_onnx_export(monkeypatch)
    result = export_artifact(trained_checkpoint, out_dir=tmp_path, device="cpu")
    assert not result.passed and result.path == tmp_path / "best_fp32.onnx.failed" and result.path.is_file()
    assert good.read_bytes() == before
    report = json.loads((tmp_path / "best_fp32.parity.json").read_text())
    assert report["status"] == "FAILED" and report["candidate"].endswith("best_fp32.onnx.failed")
    assert report["failures"][0].startswith("logits: argmax agreement") and report["agreement"] < 0.999
    assert report["difference_picture"] == "best_fp32.parity.png"  # where the classes differ, on the worst image
    picture = cv2.imread(str(tmp_path / "best_fp32.parity.png"))
    assert picture is not None and picture.shape[1] == 4 * 192  # image | reference | candidate | differences
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_fp32.onnx", "best_fp32.onnx.failed", "best_fp32.parity.json",
                                                          "best_fp32.parity.png"]


def test_opset_out_of_range_is_a_user_error():
    assert check_opset(None, "torchscript") == 17
    with pytest.raises(DronsegError, match="--opset 9 is out of range for the torchscript exporter"):
        check_opset(9, "torchscript")


def test_the_opset_help_gives_each_exporters_default():
    """`export -h` said the --opset default was 17, where torch with only the dynamo exporter writes 18 (17 is refused)."""
    from dronseg_edge.export.options import ExportOptions
    from dronseg_edge.option_fields import option_fields

    shown = next(spec.default_text for f, spec in option_fields(ExportOptions) if f.name == "opset")
    assert [check_opset(None, exporter) for exporter in ("torchscript", "dynamo")] == [17, 18]
    assert shown == "17; 18 where torch has only the dynamo exporter"


def test_fixed_batch_export_pads_the_last_parity_batch(trained_checkpoint, tmp_path):
    result = export_artifact(trained_checkpoint, batch=2, parity_images=3, out_dir=tmp_path, device="cpu")
    assert result.path.name == "best_b2_fp32.onnx" and result.passed
    assert dims(onnx.load(str(result.path)).graph.input[0]) == [2, 3, 64, 96]
    assert result.report.images == 3 and result.report.ground_truth.images == 3


def test_export_without_onnxslim_writes_the_graph_unslimmed_with_a_note(tiny_checkpoint, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "onnxslim", None)  # `import onnxslim` now raises ImportError
    with caplog.at_level(logging.WARNING, logger="dronseg_edge"):
        result = export_artifact(tiny_checkpoint, out_dir=tmp_path, device="cpu", parity=False)
    notes = [r.getMessage() for r in caplog.records if "onnxslim" in r.getMessage()]
    assert len(notes) == 1 and "not slimmed" in notes[0] and "\n" not in notes[0]
    assert read_onnx_info(result.path).extra["simplifier"] == "none (onnxslim not installed)"
    onnx.checker.check_model(onnx.load(str(result.path)), full_check=True)
    x = torch.randn(1, 3, 64, 96)
    got = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    with torch.no_grad():
        expected = SegmentationNet(model_from_checkpoint(load_checkpoint(tiny_checkpoint))).eval()(x).numpy()
    assert np.abs(got - expected).max() < 1e-3


def test_a_failing_simplifier_keeps_the_graph_as_exported_with_a_warning(monkeypatch, caplog):
    from types import SimpleNamespace

    from dronseg_edge.export.onnx import _slim

    def slim(graph):
        raise ValueError("shape inference failed\non node 7")

    monkeypatch.setitem(sys.modules, "onnxslim", SimpleNamespace(slim=slim))
    graph = onnx.ModelProto()
    assert _slim(graph) == (graph, "none (onnxslim failed: shape inference failed)")
    assert "onnxslim could not simplify the graph (shape inference failed); keeping it as exported" in caplog.text


def test_slimmed_export_says_which_simplifier(fp32_export):
    pytest.importorskip("onnxslim")
    assert read_onnx_info(fp32_export.path).extra["simplifier"].startswith("onnxslim ")


@pytest.fixture(scope="module")
def stride16_run(tmp_path_factory):
    """A tiny DeepLabV3-ResNet50 at output stride 16: one training step by the package's own loop on 10 scenes."""
    from dronseg_edge.data.augment import AugmentConfig
    from dronseg_edge.train.config import TrainConfig
    from dronseg_edge.train.fit import fit

    root = tmp_path_factory.mktemp("os16")
    write_scenes(root / "data", count=10, frames=0)
    cfg = TrainConfig(data=str(root / "data"), out=str(root / "run"), model="deeplabv3_resnet50", weights="none",
                      output_stride=16, size=TINY_SIZE, epochs=1, batch=2, max_steps_per_epoch=1, lr=0.001,
                      optimizer="adamw", bn_momentum=1.0, device="cpu", workers=0, tensorboard=False, plots=False,
                      mosaic_every=0, augment=AugmentConfig(enabled=False))
    return fit(cfg, log=lambda _m: None)


@pytest.mark.slow
def test_output_stride_16_model_trains_exports_and_passes_parity(stride16_run, tmp_path):
    """The stride travels checkpoint -> export -> parity: the ONNX file is the stride-16 network, not a stride-8 one
    with the same weights (both would load them, so parity against a wrongly rebuilt reference could not tell)."""
    ckpt = load_checkpoint(stride16_run.best)
    assert ckpt["output_stride"] == 16 and ckpt["config"]["output_stride"] == 16
    model = model_from_checkpoint(ckpt)
    assert model.output_stride == 16
    result = export_artifact(stride16_run.best, out_dir=tmp_path, device="cpu", parity_images=2)
    assert result.passed and result.report.agreement >= 0.999
    info = read_onnx_info(result.path)
    assert info.output_stride == 16 and info.arch == "deeplabv3_resnet50"
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    got = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    as_stride8 = build_model("deeplabv3_resnet50", weights="none", output_stride=8)
    as_stride8.load_state_dict(model.state_dict())
    with torch.no_grad():
        expected = SegmentationNet(model).eval()(x).numpy()
        other = SegmentationNet(as_stride8.eval())(x).numpy()
    assert np.abs(got - expected).max() < 1e-3 * max(1.0, float(np.abs(expected).max()))
    assert np.abs(got - other).max() > 100 * np.abs(got - expected).max()


@pytest.mark.parametrize("dtype, torch_net, message", [
    (TensorProto.FLOAT, lambda x: x + 1, r"differs from PyTorch at 2x3x4x4 \(max error 1\)"),
    (TensorProto.FLOAT, lambda x: x[:, :2], r"returns \(2, 3, 4, 4\) for a 2x3x4x4 input instead of \(2, 2, 4, 4\)"),
    (TensorProto.INT64, lambda x: x + 1, r"agrees with PyTorch on only 0.00% of pixels at 2x3x4x4"),
])
def test_a_graph_that_disagrees_with_torch_at_another_shape_is_refused(tmp_path, dtype, torch_net, message):
    import types

    from onnx import helper

    from dronseg_edge.export.onnx import compare_with_torch
    from testkit import onnx_model

    value = [helper.make_tensor_value_info(n, dtype, ["batch", 3, 4, 4]) for n in ("x", "y")]
    onnx.save(onnx_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", value[:1], value[1:])),
              str(tmp_path / "m.onnx"))
    x = torch.arange(96).reshape(2, 3, 4, 4).to(torch.float32 if dtype == TensorProto.FLOAT else torch.int64)
    with pytest.raises(DronsegError, match=rf"--dynamic export of m {message}: FIX"):
        compare_with_torch(tmp_path / "m.onnx", torch_net, x, types.SimpleNamespace(dynamic=True), "export of m", "FIX")


def test_a_graph_the_onnx_checker_rejects_is_an_error_naming_it():
    from onnx import helper

    from dronseg_edge.export.onnx import _check
    from testkit import onnx_model

    value = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["nowhere"], ["y"])], "g", [], [value])
    with pytest.raises(RuntimeError, match="onnx.checker rejected the exported graph: "):
        _check(onnx_model(graph), "exported graph")


def test_the_dynamo_exporter_without_onnxscript_says_what_to_install(monkeypatch):
    from dronseg_edge.errors import BackendUnavailable
    from dronseg_edge.export.onnx import _export_dynamo

    monkeypatch.setitem(sys.modules, "onnxscript", None)
    with pytest.raises(BackendUnavailable, match="only has the dynamo ONNX exporter, which needs onnxscript: pip install"):
        _export_dynamo(torch.nn.Identity(), torch.zeros(1), None, 18, None, ("x", ["y"]))
