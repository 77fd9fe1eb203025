"""fp16 and int8 ONNX exports of a trained checkpoint pass parity on ONNX Runtime; their graphs are
what TensorRT needs (fp32 I/O; symmetric per-channel Q/DQ with zero points of 0, float biases)."""

from __future__ import annotations

import importlib.util
import shutil
import sys

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from dronseg_edge.errors import BackendUnavailable, DronsegError
from dronseg_edge.export import ParityThresholds, export_artifact
from dronseg_edge.metadata import ModelInfo, read_onnx_info
from testkit import requires_ort_cuda



@pytest.fixture(scope="module")
def fp16_export(trained_checkpoint, tmp_path_factory):
    return export_artifact(trained_checkpoint, precision="fp16", out_dir=tmp_path_factory.mktemp("fp16"), device="cpu")


@pytest.fixture(scope="module")
def int8_export(trained_checkpoint, tmp_path_factory):
    return export_artifact(trained_checkpoint, precision="int8", out_dir=tmp_path_factory.mktemp("int8"), device="cpu")


def test_fp16_passes_default_parity(fp16_export):
    report = fp16_export.report
    assert fp16_export.passed and fp16_export.path.name == "best_fp16.onnx", report.table()
    assert report.thresholds == ParityThresholds(0.995, None) and report.agreement >= 0.995
    assert report.outputs[0].nonfinite_candidate == 0 and report.warnings == []
    assert report.outputs[0].abs_max > 0  # really rounded: not the fp32 graph under another name


def test_fp16_graph_has_fp16_weights_and_fp32_io(fp16_export):
    graph = onnx.load(str(fp16_export.path))
    assert graph.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert graph.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    conv_weights = {n.input[1] for n in graph.graph.node if n.op_type == "Conv"}
    types = {t.data_type for t in graph.graph.initializer if t.name in conv_weights}
    assert types == {TensorProto.FLOAT16}
    info = read_onnx_info(fp16_export.path)
    assert info.precision == "fp16" and "float32 input/output" in info.extra["fp16"]


def test_int8_passes_parity_with_the_default_miou_limit(int8_export):
    report = int8_export.report
    assert int8_export.passed and int8_export.path.name == "best_int8.onnx", report.table()
    assert report.thresholds == ParityThresholds(0.98, 1.0) and report.ground_truth is not None  # the defaults
    assert -report.miou_delta <= 1.0 and report.agreement >= 0.98
    assert report.outputs[0].abs_max > 0.001  # quantised for real


def test_int8_graph_is_what_tensorrt_accepts(int8_export):
    graph = onnx.load(str(int8_export.path))
    producer = {out: n.op_type for n in graph.graph.node for out in n.output}
    convs = [n for n in graph.graph.node if n.op_type == "Conv"]
    # every convolution reads int8 activations and int8 weights through DequantizeLinear; its bias stays float
    assert convs and all(producer.get(n.input[0]) == producer.get(n.input[1]) == "DequantizeLinear" for n in convs)
    assert zero_points_are_zero(graph)
    inits = {t.name: t for t in graph.graph.initializer}
    assert all(len(n.input) < 3 or inits[n.input[2]].data_type == TensorProto.FLOAT for n in convs)
    weight_dq = [n for n in graph.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert {inits[n.input[0]].data_type for n in weight_dq} == {TensorProto.INT8}  # no int32 bias DQ
    for node in weight_dq:
        axis = {a.name: a.i for a in node.attribute}.get("axis", 1)
        weight = numpy_helper.to_array(inits[node.input[0]])
        scales = numpy_helper.to_array(inits[node.input[1]])
        assert axis == 0 and scales.shape == (weight.shape[0],)  # per output channel
        assert weight.min() >= -127  # symmetric int8 weights: TensorRT's [-127, 127]
    info = read_onnx_info(int8_export.path)
    calibration = info.extra["calibration"]
    assert calibration["method"] == "percentile" and calibration["images"] == 8
    assert calibration["source"].startswith("validation split")


def test_int8_calibration_from_a_folder_is_capped_and_reads_each_image_once(trained_checkpoint, scenes, tmp_path,
                                                                             monkeypatch):
    import dronseg_edge.export.images as images

    reads, load = [], images.read_bgr
    monkeypatch.setattr(images, "read_bgr", lambda path: reads.append(path) or load(path))
    result = export_artifact(trained_checkpoint, precision="int8", calib_data=scenes, calib_images=12,
                             out_dir=tmp_path, device="cpu", parity=False)
    assert read_onnx_info(result.path).extra["calibration"]["images"] == 12
    assert len(reads) == 12  # ONNX Runtime asks for one batch at a time: 78 reads when each skipped the ones before


def test_calibration_reads_the_images_only_not_their_masks(scenes, tmp_path):
    """A data set whose masks hold an ignore label (255) calibrates: calibration never uses the masks."""
    from dronseg_edge.export.images import ImageItem, ImageSet
    from dronseg_edge.export.quantize import calibration_batches

    mask = tmp_path / "void.png"
    cv2.imwrite(str(mask), np.full((64, 96), 255, np.uint8))
    image = next((scenes / "imgs" / "imgs").iterdir())
    info = ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64), batch=1)
    (feed,) = calibration_batches(ImageSet([ImageItem(image, mask)], "test"), info, "images")
    assert feed["images"].shape == (1, 3, 64, 96)


def test_int8_is_reused_only_where_it_was_calibrated_alike(int8_export, trained_checkpoint, scenes, tmp_path):
    """The engine path and bench --matrix reuse an int8 file: one calibrated on other images or by another method is not it."""
    shutil.copy(int8_export.path, tmp_path / int8_export.path.name)
    same = export_artifact(trained_checkpoint, precision="int8", out_dir=tmp_path, device="cpu", parity=False, reuse=True)
    assert same.reused
    other = export_artifact(trained_checkpoint, precision="int8", calib_method="minmax", calib_data=scenes, calib_images=2,
                            out_dir=tmp_path, device="cpu", parity=False, reuse=True)
    assert not other.reused
    assert read_onnx_info(other.path).extra["calibration"] == {"method": "minmax", "images": 2,
                                                               "source": f"data set {scenes.resolve()}"}


def test_int8_without_its_data_set_here_is_reused_when_calibrated_by_the_same_method(tiny_checkpoint, synth_root,
                                                                                     onnx_export, tmp_path):
    """A Jetson building the engine of a copied run has the int8 file but not the data set it was calibrated on."""
    # test_onnx_metadata's int8 file, copied in as the run's export folder would be
    shutil.copy(onnx_export(tiny_checkpoint, precision="int8", calib_data=synth_root, calib_images=4), tmp_path)
    assert export_artifact(tiny_checkpoint, precision="int8", out_dir=tmp_path, device="cpu", reuse=True).reused
    with pytest.raises(DronsegError, match="--calib-data is needed"):
        export_artifact(tiny_checkpoint, precision="int8", calib_method="minmax", out_dir=tmp_path, device="cpu", reuse=True)


@pytest.mark.skipif(importlib.util.find_spec("onnx.mapping") is not None, reason="this onnx (< 1.19) still has onnx.mapping")
def test_int8_with_an_onnxruntime_older_than_its_onnx_says_which_to_install(trained_checkpoint, scenes, tmp_path,
                                                                           monkeypatch):
    """An onnxruntime before 1.19 (an older Jetson build) beside today's onnx: its quantizer would die on onnx.mapping."""
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "__version__", "1.18.1")
    with pytest.raises(BackendUnavailable, match=r"^int8 export with onnxruntime 1\.18\.1 needs onnx < 1\.19 .*: pip install "
                                                 r"'onnx<1\.19', or onnxruntime >= 1\.19$"):
        export_artifact(trained_checkpoint, precision="int8", calib_data=scenes, calib_images=2, out_dir=tmp_path / "o",
                        device="cpu", parity=False)
    assert not list((tmp_path / "o").glob("*.onnx"))


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_an_onnxruntime_built_for_numpy_1_under_numpy_2_names_the_fix(tiny_checkpoint, scenes, tmp_path, monkeypatch,
                                                                       precision):
    """onnxruntime 1.17/1.18 (the core's floor on x86-64) beside numpy 2 cannot load: `pip install onnxruntime` was
    the advice, though it is installed."""
    from dronseg_edge import machine

    real, versions = machine.installed_version, {"onnxruntime": "1.18.1", "numpy": "2.4.6"}
    for module in ("onnxruntime", "onnxruntime.transformers"):  # its import fails (for real: an empty ImportError)
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.setattr(machine, "installed_version", lambda name: versions.get(name) or real(name))
    with pytest.raises(BackendUnavailable, match=r"^onnxruntime 1\.18\.1 was built against numpy 1\.x and cannot load under "
                                                 r"numpy 2\.4\.6: pip install 'numpy<2' \(or 'onnxruntime>=1\.19'\)$"):
        export_artifact(tiny_checkpoint, precision=precision, calib_data=scenes, calib_images=2, out_dir=tmp_path,
                        device="cpu", parity=False)


def test_int8_without_calibration_images_fails_before_writing(trained_checkpoint, tiny_checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DronsegError, match="--calib-data .*empty holds no images"):
        export_artifact(trained_checkpoint, precision="int8", calib_data=tmp_path / "empty", out_dir=tmp_path / "o",
                        device="cpu")
    with pytest.raises(DronsegError, match="--calib-data is needed: checkpoint .*tiny.pt records no validation split"):
        export_artifact(tiny_checkpoint, precision="int8", out_dir=tmp_path / "o", device="cpu")
    assert not (tmp_path / "o").exists()  # nor the folder it made


@pytest.mark.gpu
@pytest.mark.slow
@requires_ort_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_provider_parity_at_1280x720(trained_checkpoint, tmp_path, precision):
    result = export_artifact(trained_checkpoint, precision=precision, size=(1280, 720), out_dir=tmp_path, device="cuda")
    assert result.passed, result.report.table()
    assert "CUDAExecutionProvider" in result.report.candidate_provider
    assert result.report.size == (1280, 720) and np.isfinite(result.report.outputs[0].abs_max)


def zero_points_are_zero(graph: onnx.ModelProto) -> bool:
    """True when every Q/DQ zero point is 0 (TensorRT accepts nothing else)."""
    inits = {t.name: t for t in graph.graph.initializer}
    for node in graph.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2 and node.input[2]:
            tensor = inits.get(node.input[2])
            if tensor is None or np.any(onnx.numpy_helper.to_array(tensor) != 0):
                return False
    return True
