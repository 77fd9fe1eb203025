"""Metrics: hand-computed confusion matrices, IoU/Dice, the competition rule, accumulation, all_reduce."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from testkit import requires_cuda

# The 2-process gloo launcher lives with the training tests, its main users; pytest puts tests/train
# on sys.path only while it collects a test from there.
sys.path.insert(0, str(Path(__file__).with_name("train")))
from ddp_probe import launch  # noqa: E402

from dronseg_edge.classes import CLASS_NAMES
from dronseg_edge.metrics import (
    SegmentationMetrics,
    confusion_matrix,
    dice_from_confusion,
    iou_from_confusion,
    reduce_device,
)

# A 2x3 image with 3 classes. Truth 0 at (0,0),(0,1) predicted 0,1; truth 1 at (0,2),(1,2) predicted
# 1,1; truth 2 at (1,0),(1,1) predicted 2,0.
TARGET = torch.tensor([[0, 0, 1], [2, 2, 1]])
PRED = torch.tensor([[0, 1, 1], [2, 0, 1]])
HAND_CM = [[1, 1, 0], [0, 2, 0], [1, 0, 1]]  # rows truth, columns prediction
HAND_IOU = [1 / 3, 2 / 3, 1 / 2]  # TP / (TP + FP + FN): 1/(1+1+1), 2/(2+1+0), 1/(1+0+1)
HAND_DICE = [2 / 4, 4 / 5, 2 / 3]  # 2TP / (2TP + FP + FN)


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12, abs=1e-12)


def test_confusion_matrix_by_hand():
    cm = confusion_matrix(PRED, TARGET, 3)
    assert cm.dtype == torch.int64 and cm.tolist() == HAND_CM
    # A batch dimension and uint8 inputs give the same counts.
    assert confusion_matrix(PRED[None].to(torch.uint8), TARGET[None].to(torch.uint8), 3).tolist() == HAND_CM


def test_ignored_and_out_of_range_pixels_count_nowhere():
    target = torch.cat([TARGET, torch.tensor([[255], [255]])], dim=1)
    pred = torch.cat([PRED, torch.tensor([[2], [0]])], dim=1)
    assert confusion_matrix(pred, target, 3).tolist() == HAND_CM
    assert confusion_matrix(pred.to(torch.uint8), target.to(torch.uint8), 3).tolist() == HAND_CM
    # A custom ignore value inside the class range works too (class 2 then vanishes from the rows).
    assert confusion_matrix(PRED, TARGET, 3, ignore_index=2).tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]


def test_iou_and_dice_from_confusion_by_hand():
    cm = torch.tensor(HAND_CM)
    iou, dice = iou_from_confusion(cm), dice_from_confusion(cm)
    assert iou.dtype == dice.dtype == torch.float64
    assert iou.tolist() == pytest.approx(HAND_IOU)
    assert dice.tolist() == pytest.approx(HAND_DICE)


def test_absent_class_is_nan_and_left_out_of_the_means():
    metrics = SegmentationMetrics(num_classes=4)
    metrics.update(PRED[None], TARGET[None])
    scores = metrics.compute()
    assert math.isnan(scores["iou"][3]) and math.isnan(scores["dice"][3])
    assert scores["miou"] == pytest.approx(sum(HAND_IOU) / 3)
    assert scores["mdice"] == pytest.approx(sum(HAND_DICE) / 3)
    assert scores["pixel_acc"] == pytest.approx(4 / 6)
    assert scores["confusion"] == [row + [0] for row in HAND_CM] + [[0, 0, 0, 0]]


def test_image_class_dice_competition_rule():
    # Image A: all class 0, predicted right (classes 1, 2 absent from both -> 1.0).
    # Image B: truth [0, 1], prediction [1, 1]: class 0 -> 0, class 1 -> 2*1/(2+1), class 2 -> 1.0.
    target = torch.tensor([[[0, 0]], [[0, 1]]])
    pred = torch.tensor([[[0, 0]], [[1, 1]]])
    metrics = SegmentationMetrics(num_classes=3)
    metrics.update(pred, target)
    scores = metrics.compute()
    assert scores["images"] == 2
    assert scores["competition"] == pytest.approx((3 + 0 + 2 / 3 + 1) / 6)
    assert scores["competition_per_class"] == pytest.approx([0.5, (1 + 2 / 3) / 2, 1.0])
    # Pixel-level Dice differs: class 2 never appears, so it is NaN there, not 1.0.
    assert math.isnan(scores["dice"][2])


def test_image_class_dice_skips_ignored_pixels():
    target = torch.tensor([[[1, 255]]])
    pred = torch.tensor([[[1, 0]]])  # the wrong 0 sits on an ignored pixel
    metrics = SegmentationMetrics(num_classes=2)
    metrics.update(pred, target)
    assert metrics.compute()["competition_per_class"] == [1.0, 1.0]


def test_perfect_prediction_scores_one_everywhere():
    torch.manual_seed(0)
    target = torch.randint(0, 12, (3, 16, 24))
    metrics = SegmentationMetrics()
    metrics.update(target.clone(), target)
    scores = metrics.compute()
    for key in ("miou", "mdice", "pixel_acc", "competition"):
        assert scores[key] == pytest.approx(1.0), key
    assert scores["iou"] == pytest.approx([1.0] * 12)


def test_two_batches_equal_one_concatenated_batch():
    generator = torch.Generator().manual_seed(1)
    target = torch.randint(0, 5, (6, 10, 12), generator=generator)
    target[:, :2] = 255
    pred = torch.where(torch.rand(target.shape, generator=generator) < 0.6, target % 5,
                       torch.randint(0, 5, target.shape, generator=generator))
    pred[4] = 0  # one image missing most classes, so the competition rule matters
    split, whole = SegmentationMetrics(num_classes=5), SegmentationMetrics(num_classes=5)
    split.update(pred[:2], target[:2])
    split.update(pred[2:], target[2:])
    whole.update(pred, target)
    a, b = split.compute(), whole.compute()
    assert a["confusion"] == b["confusion"] and a["images"] == b["images"] == 6
    for key in ("miou", "mdice", "pixel_acc", "competition"):
        assert _same(a[key], b[key]), key
    assert all(_same(x, y) for x, y in zip(a["iou"] + a["dice"], b["iou"] + b["dice"]))
    # The per-image rule gives a different number from pixel-level Dice on such data.
    assert a["competition"] != pytest.approx(a["mdice"], abs=1e-3)


def test_reset_and_empty_state():
    metrics = SegmentationMetrics(num_classes=3)
    empty = metrics.compute()
    assert empty["images"] == 0 and math.isnan(empty["miou"]) and math.isnan(empty["competition"])
    metrics.update(PRED, TARGET)
    assert metrics.compute()["images"] == 1
    metrics.reset()
    assert metrics.compute()["confusion"] == [[0] * 3] * 3


def test_bad_inputs_are_rejected():
    metrics = SegmentationMetrics(num_classes=3)
    with pytest.raises(TypeError, match="argmax"):
        metrics.update(torch.randn(1, 3, 2, 3), TARGET[None])
    with pytest.raises(ValueError, match="same shape"):
        metrics.update(PRED[None], TARGET[None, :1])


def test_all_reduce_without_process_group_is_a_no_op():
    assert not dist.is_initialized()
    metrics = SegmentationMetrics(num_classes=3)
    metrics.update(PRED, TARGET)
    before = metrics.compute()
    metrics.all_reduce()
    assert metrics.compute() == before


def test_all_reduce_in_a_single_process_gloo_group_keeps_values(tmp_path):
    metrics = SegmentationMetrics(num_classes=3)
    metrics.update(torch.stack([PRED, TARGET]), torch.stack([TARGET, TARGET]))
    before = metrics.compute()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        metrics.all_reduce()
    finally:
        dist.destroy_process_group()
    after = metrics.compute()
    assert after["confusion"] == before["confusion"] and after["images"] == 2
    assert after["competition"] == pytest.approx(before["competition"])
    assert after["competition_per_class"] == pytest.approx(before["competition_per_class"])
    # The state still accumulates after the reduction.
    metrics.update(PRED, TARGET)
    assert metrics.compute()["images"] == 3


def test_reduce_device_follows_the_backend():
    cpu, cuda1 = torch.device("cpu"), torch.device("cuda", 1)
    # NCCL takes CUDA tensors only: state a rank never filled (still on the CPU) must move.
    assert reduce_device(cpu, "nccl") == torch.device("cuda")
    assert reduce_device(cuda1, "nccl") == cuda1
    assert reduce_device(cpu, "gloo") == cpu
    assert reduce_device(cuda1, "gloo") == cuda1
    assert reduce_device(cpu, "nccl", "cuda:2") == torch.device("cuda", 2)  # the caller's device wins
    assert reduce_device(cuda1, "gloo", torch.device("cpu")) == cpu


@pytest.mark.slow
def test_all_reduce_with_a_rank_without_validation_images(tmp_path):
    seen = launch("metrics_empty_rank", tmp_path / "seen.json")
    expected = seen["expected"]
    assert expected["images"] == 1
    for rank in seen["ranks"]:
        assert rank["confusion"] == expected["confusion"] == HAND_CM and rank["images"] == 1
        assert rank["competition"] == pytest.approx(expected["competition"])


@pytest.mark.gpu
@requires_cuda
def test_empty_state_reduces_over_nccl(tmp_path):
    metrics = SegmentationMetrics(num_classes=3)  # never updated: its state was made on the CPU
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        metrics.all_reduce()
    finally:
        dist.destroy_process_group()
    assert metrics.confusion.is_cuda and metrics.compute()["images"] == 0


@pytest.mark.gpu
@requires_cuda
def test_state_stays_on_the_gpu():
    metrics = SegmentationMetrics(num_classes=3)
    metrics.update(PRED.cuda(), TARGET.cuda())
    assert metrics.confusion.is_cuda and metrics.image_stats.is_cuda
    assert metrics.compute()["confusion"] == HAND_CM
