"""PyTorch and ONNX Runtime (CPU) give the same class maps for the same frames, through the whole pipeline.

On the CPU a checkpoint and a plain ONNX file share the one host pre/post-processing (runtime/host.py),
so the two backends must agree to a near-tie pixel: on every pixel whose reference top-2 logit margin
is above what fp32 rounding can move a logit by (testkit.assert_same_classes_where_decided).
"""

import json

import cv2
import numpy as np
import pytest
from pipeline_media import scene, scene_mask

from dronseg_edge.pipeline import RunOptions, Segmenter, run_inference
from testkit import SAME_PREPOST_MARGIN, assert_same_classes_where_decided

pytest.importorskip("onnxruntime", reason="the ONNX Runtime backend needs onnxruntime (extra: ort)")


@pytest.fixture(scope="module")
def onnx_models(trained_checkpoint, onnx_export):
    return {"logits": onnx_export(trained_checkpoint), "argmax": onnx_export(trained_checkpoint, head="argmax")}


def test_trained_fixture_predicts_several_classes(trained_checkpoint):
    with Segmenter(trained_checkpoint, device="cpu") as seg:
        mask = seg.predict(scene(100, (96, 64))).mask
    assert set(np.unique(mask)) >= {3, 10, 11}
    assert (mask == scene_mask(100, (96, 64))).mean() > 0.8


@pytest.mark.parametrize("head", ["logits", "argmax"])
def test_torch_and_onnxruntime_give_the_same_class_maps(head, trained_checkpoint, onnx_models):
    frames = [scene(i, size) for i, size in enumerate([(96, 64), (128, 80), (200, 150), (64, 48)] * 2)]
    # tile="off": 200x150 is twice the input, which --tile auto would tile, but an argmax head cannot
    with Segmenter(trained_checkpoint, device="cpu", tile="off") as torch_seg, \
            Segmenter(onnx_models[head], device="cpu", tile="off") as onnx_seg:
        assert onnx_seg.backend.name == "onnxruntime" and "CPUExecutionProvider" in onnx_seg.backend.provider
        for frame in frames:
            expected, got = torch_seg.predict(frame), onnx_seg.predict(frame)
            assert got.mask.shape == frame.shape[:2]
            assert_same_classes_where_decided(got.mask, expected.mask, checkpoint_logits(torch_seg, frame),
                                              SAME_PREPOST_MARGIN)
            assert np.allclose(got.shares, expected.shares, atol=0.01)


def test_video_run_on_onnxruntime_matches_the_checkpoint_run(trained_checkpoint, onnx_models, video_path, tmp_path):
    outputs = {}
    for name, model in (("torch", trained_checkpoint), ("onnx", onnx_models["logits"])):
        with Segmenter(model, device="cpu") as seg:
            summary = run_inference(seg, video_path, RunOptions(out=tmp_path / name, save_masks=True, progress=False))
        outputs[name] = summary
    assert outputs["onnx"].data["backend"] == "onnxruntime" and outputs["onnx"].frames == 24
    frames = decoded_frames(video_path)
    with Segmenter(trained_checkpoint, device="cpu") as reference:
        for index in (0, 12, 23):
            masks = [cv2.imread(str(tmp_path / name / "masks" / f"{index:06d}.png"), cv2.IMREAD_UNCHANGED)
                     for name in ("torch", "onnx")]
            logits = checkpoint_logits(reference, frames[index])
            assert_same_classes_where_decided(masks[1], masks[0], logits, SAME_PREPOST_MARGIN)
    stats = [[json.loads(line) for line in (tmp_path / name / "stats.jsonl").read_text().splitlines()]
             for name in ("torch", "onnx")]
    assert [s["frame"] for s in stats[0]] == [s["frame"] for s in stats[1]] == list(range(24))


def checkpoint_logits(segmenter: Segmenter, frame: np.ndarray) -> np.ndarray:
    """(C, h, w) logits of a Segmenter's model for ``frame``, as its backend pre-processes it."""
    return segmenter.backend.segment(frame[None], logits=True).logits[0]


def decoded_frames(path) -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def test_the_agreement_check_fails_on_one_decided_pixel_changed(trained_checkpoint):
    frame = scene(5, (128, 80))
    with Segmenter(trained_checkpoint, device="cpu", tile="off") as seg:
        mask, logits = seg.predict(frame).mask, checkpoint_logits(seg, frame)
    assert_same_classes_where_decided(mask, mask.copy(), logits, SAME_PREPOST_MARGIN)
    broken = mask.copy()
    broken[40, 64] = (broken[40, 64] + 1) % 12  # the middle of the sky box: a decided pixel
    with pytest.raises(AssertionError, match="decided pixels differ"):
        assert_same_classes_where_decided(broken, mask, logits, SAME_PREPOST_MARGIN)
