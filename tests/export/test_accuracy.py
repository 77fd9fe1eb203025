"""Accuracy of exported files against ground truth (export/accuracy.py): the split an artifact is scored on,
scores comparable with the checkpoint's, static batches, frames artifacts and the one-line refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from dronseg_edge.data.aeroscapes import read_mask
from dronseg_edge.errors import DronsegError
from dronseg_edge.export.accuracy import (DEFAULT_SEED, DEFAULT_VAL_FRACTION, evaluate_artifact, score_backend,
                                          split_samples_for)
from dronseg_edge.metadata import ModelInfo
from dronseg_edge.metrics import SegmentationMetrics
from testkit import FakeBackend


@pytest.fixture(scope="module")
def fp32_onnx(trained_checkpoint, onnx_export):
    return onnx_export(trained_checkpoint)


def _val_ids(trained_run) -> list[str]:
    return json.loads((trained_run.run_dir / "split.json").read_text())["val"]


def test_fp32_onnx_scores_as_its_checkpoint_on_the_recorded_split(fp32_onnx, trained_run):
    from dronseg_edge.train.evaluation import evaluate_checkpoint

    reference = evaluate_checkpoint(trained_run.best, device="cpu", workers=0)
    scored = evaluate_artifact(fp32_onnx, device="cpu", batch=3)
    assert scored.keys() == reference.keys()  # eval --json: one schema for a .pt and an .onnx (keys differed)
    assert reference["model"] == str(trained_run.best.resolve()) and reference["backend"] == "torch"
    assert reference["split_source"] == scored["split_source"] and reference["precision"] == "fp32"
    assert scored["images"] == reference["images"] == len(_val_ids(trained_run))
    assert scored["data"] == reference["data"] and scored["split"] == "val"
    assert scored["split_source"] == f"val split recorded in {trained_run.best.resolve()}"
    assert scored["backend"] == "onnxruntime" and scored["precision"] == "fp32" and scored["input_size"] == [96, 64]
    assert 0.3 < reference["miou"] <= 1  # a trained model: the comparison below means something
    assert abs(scored["miou"] - reference["miou"]) < 0.005
    assert abs(scored["competition"] - reference["competition"]) < 0.005
    assert len(scored["iou"]) == 12 and len(scored["competition_per_class"]) == 12


def test_without_its_checkpoint_the_split_is_recomputed_as_train_makes_it(trained_run):
    from dronseg_edge.train.config import TrainConfig

    assert (DEFAULT_VAL_FRACTION, DEFAULT_SEED) == (TrainConfig.val_fraction, TrainConfig.seed)
    root = trained_run.best.parent.parent  # any folder; replaced below by the run's data set
    data = json.loads((trained_run.run_dir / "config.json").read_text())["data"]
    info = ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64), extra={"source_checkpoint": str(root / "gone.pt")})
    images = split_samples_for(root / "m.onnx", info, data, "val")
    assert [s.image_id for s in images.samples] == _val_ids(trained_run)  # the tiny run used train's defaults
    assert "recomputed" in images.source and "no source checkpoint found" in images.source
    with pytest.raises(DronsegError, match=r"m.onnx: no data set to score on .*names no source checkpoint .*pass --data DIR"):
        split_samples_for(root / "m.onnx", info, None, "val")
    with pytest.raises(DronsegError, match="--split 'test': choose val, train or all"):
        split_samples_for(root / "m.onnx", info, data, "test")
    assert len(split_samples_for(root / "m.onnx", info, data, "all").samples) == 40


@pytest.mark.parametrize("recorded", [5, ["a.pt"], {"path": "a.pt"}])
def test_a_source_checkpoint_that_is_no_text_counts_as_none_not_a_type_error(recorded, tmp_path):
    # An edited .onnx (metadata_props extra) or --meta JSON: eval was a TypeError traceback from Path(5).
    info = ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64), extra={"source_checkpoint": recorded})
    with pytest.raises(DronsegError, match=r"m.onnx: no data set to score on .*names no source checkpoint .*pass --data DIR"):
        split_samples_for(tmp_path / "m.onnx", info, None, "val")


def test_static_artifacts_get_their_batch_and_logits_are_scored_at_the_masks_size(trained_run):
    samples = split_samples_for(trained_run.best, ModelInfo(arch="x", input_size=(96, 64)), None, "val").samples

    def sky_logits(batch):  # half the model input: upsampled to the 96x64 masks before scoring
        out = torch.zeros(batch.shape[0], 12, batch.shape[2], batch.shape[3])
        out[:, 11] = 1.0
        return out

    static = FakeBackend("m.onnx", input_size=(48, 32), batch=1, dynamic=False, respond=sky_logits)
    scores = score_backend(static, samples, batch=3)
    assert static.batches == [(1, 3, 32, 48)] * len(samples)
    dynamic = FakeBackend("m.onnx", input_size=(48, 32), respond=sky_logits)
    assert score_backend(dynamic, samples, batch=3)["miou"] == scores["miou"]
    assert dynamic.batches == [(3, 3, 32, 48)] * 3  # 8 images: the last call padded to 3
    expected = SegmentationMetrics(12)
    for sample in samples:
        mask = torch.from_numpy(read_mask(sample.mask_path))
        expected.update(torch.full_like(mask, 11), mask)
    assert scores["images"] == len(samples) and scores["confusion"] == expected.compute()["confusion"]
    assert scores["competition"] == pytest.approx(expected.compute()["competition"])


def test_frames_artifacts_take_uint8_frames_and_return_the_class_map(trained_run):
    samples = split_samples_for(trained_run.best, ModelInfo(arch="x", input_size=(96, 64)), None, "val").samples
    seen = []

    def road_below_half(frames):  # (N, H, W, 3) uint8 in, an (N, H, W) class map at a quarter of the frame out
        seen.append((tuple(frames.shape), str(frames.dtype)))
        out = torch.full((frames.shape[0], frames.shape[1] // 2, frames.shape[2] // 2), 11, dtype=torch.uint8)
        out[:, out.shape[1] // 2:] = 10
        return out

    backend = FakeBackend("m.onnx", io="frames", head="argmax", color_order="BGR", respond=road_below_half)
    scores = score_backend(backend, samples, batch=4)
    assert seen == [((4, 64, 96, 3), "torch.uint8")] * 2
    expected = SegmentationMetrics(12)
    for sample in samples:
        mask = torch.from_numpy(read_mask(sample.mask_path))
        pred = torch.full_like(mask, 11)
        pred[32:] = 10  # nearest-neighbour upsampling of the half-size map
        expected.update(pred, mask)
    assert scores["confusion"] == expected.compute()["confusion"]
    assert 0 < scores["miou"] < 1


def test_no_images_is_a_one_line_error():
    with pytest.raises(DronsegError, match="no images to score m.onnx on: check --data and --split"):
        score_backend(FakeBackend("m.onnx"), [])


def test_pixels_reach_the_artifact_as_preprocess_host_makes_them(trained_run):
    """The tensors artifact gets exactly runtime/host.preprocess_host's batch of the BGR image."""
    import cv2

    from dronseg_edge.runtime.host import preprocess_host

    samples = split_samples_for(trained_run.best, ModelInfo(arch="x", input_size=(96, 64)), None, "val").samples[:1]
    got = []
    backend = FakeBackend("m.onnx", input_size=(48, 32), respond=lambda b: got.append(b.clone()) or torch.zeros(1, 12, 32, 48))
    score_backend(backend, samples, batch=1)
    want = preprocess_host([cv2.imread(str(samples[0].image_path))], backend.info)
    np.testing.assert_array_equal(got[0].numpy(), want)


def test_eval_of_a_file_whose_metadata_lies_names_the_file_not_the_data(tiny_checkpoint, onnx_export, synth_root, tmp_path):
    """Issue 19: 3 class names on a 12-class model blamed good data ("mask ... holds values outside 0..2")."""
    import onnx

    model = onnx.load(str(onnx_export(tiny_checkpoint)))
    for entry in model.metadata_props:
        if entry.key in ("class_names", "palette"):
            entry.value = json.dumps(["a", "b", "c"] if entry.key == "class_names" else [[1, 2, 3]] * 3)
    lying = tmp_path / "lying.onnx"
    onnx.save(model, str(lying))
    with pytest.raises(DronsegError) as info:
        evaluate_artifact(lying, data=synth_root, split="all", device="cpu")
    message = str(info.value)
    assert message.startswith(f"{lying}: its metadata says 3 classes") and "mask" not in message, message


def test_eval_of_an_onnx_file_refuses_a_mask_that_is_not_its_images_size_as_eval_of_the_checkpoint(fp32_onnx, scenes,
                                                                                                 tmp_path):
    import shutil

    import cv2

    data = tmp_path / "data"
    shutil.copytree(scenes, data)
    mask = sorted((data / "masks/masks").glob("*.png"))[0]
    cv2.imwrite(str(mask), cv2.resize(cv2.imread(str(mask), cv2.IMREAD_UNCHANGED), (40, 20),
                                      interpolation=cv2.INTER_NEAREST))  # scored stretched before: exit 0
    with pytest.raises(DronsegError, match=r"is 40x20 but image .* masks must match their images pixel for pixel"):
        evaluate_artifact(fp32_onnx, data=data, split="all", device="cpu")


def test_recomputing_a_split_without_iterative_stratification_says_what_to_install(tmp_path, monkeypatch):
    import sys

    from dronseg_edge.data.synthetic import synthesize

    synthesize(tmp_path / "data", images=3, size=(96, 64), video_frames=0, seed=0, test_fraction=0.0)
    for name in ("iterstrat", "iterstrat.ml_stratifiers"):  # a core + export install: no train extra (the submodule
        monkeypatch.setitem(sys.modules, name, None)  # too: an earlier test of the suite imported it)
    info = ModelInfo(arch="lraspp_mobilenet_v3_large", input_size=(96, 64))
    with pytest.raises(DronsegError, match=r"recomputing the val split of .*data needs iterative-stratification: pip install "
                                           r"'dronseg-edge\[train\]', or score every image with --split all"):
        split_samples_for(tmp_path / "m.onnx", info, tmp_path / "data", "val")
