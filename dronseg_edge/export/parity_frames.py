"""Parity of a frames graph (``export --io frames``): class maps at the frame's own size.

The candidate gets uint8 BGR frames and does its own pre/post-processing; the reference (the
checkpoint) gets the same frames through the package's host pre-processing (``preprocess_host``:
cv2.INTER_AREA when shrinking, as training shrank its images) and bilinear logits to the frame size,
argmax.
So the agreement measures the whole deployable path, resizes included, not just the network.
Frames are the images at the graph's fixed source size (resized as training resized), or at their
own size for a dynamic graph.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from dronseg_edge.export.embedded import frame_at
from dronseg_edge.export.images import ImageSet, load_item
from dronseg_edge.export.parity_picture import WorstImage
from dronseg_edge.export.parity_report import GroundTruthScores, OutputStats, ParityReport, ParityThresholds
from dronseg_edge.metrics import SegmentationMetrics, confusion_matrix, iou_from_confusion
from dronseg_edge.devices import as_torch_device
from dronseg_edge.runtime.base import Backend
from dronseg_edge.runtime.host import preprocess_host


def reference_class_map(ref: Backend, frame: np.ndarray, info) -> torch.Tensor:
    """(H, W) long class map of one BGR frame by ``ref`` (logits) with the package's pre/post at ``info.input_size``."""
    x = torch.from_numpy(preprocess_host(frame, info)).to(as_torch_device(ref.device))
    logits = ref.infer(x).float()
    logits = F.interpolate(logits, size=frame.shape[:2], mode="bilinear", align_corners=False)
    return logits.argmax(dim=1)[0].cpu()


def compare_frames(ref: Backend, cand: Backend, images: ImageSet, thresholds: ParityThresholds) -> ParityReport:
    """The (unjudged) report of ``cand`` (io='frames') against ``ref`` (a logits model) on ``images``."""
    info = cand.info
    num_classes = info.num_classes
    source = info.source_size if not info.dynamic else None
    batch = info.batch if (not info.dynamic and info.batch) else 1
    agree = total = 0
    between = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    ref_scores, cand_scores = SegmentationMetrics(num_classes), SegmentationMetrics(num_classes)
    gt_images = 0
    sizes = set()
    worst = WorstImage(info.class_names, info.palette)
    items = images.items
    for start in range(0, len(items), batch):
        loaded = [load_item(item, num_classes) for item in items[start:start + batch]]
        frames = [np.ascontiguousarray(frame_at(frame, source)) for frame, _ in loaded]
        padded = frames + [frames[-1]] * (batch - len(frames))
        cand_out = cand.infer(torch.from_numpy(np.stack(padded))).cpu()[: len(frames)].long()
        for i, (frame, (_, mask)) in enumerate(zip(frames, loaded)):
            height, width = frame.shape[:2]
            sizes.add((width, height))
            ref_mask, cand_mask = reference_class_map(ref, frame, info), cand_out[i]
            agree += int((ref_mask == cand_mask).sum())
            total += ref_mask.numel()
            between += confusion_matrix(cand_mask, ref_mask, num_classes)
            worst.update(items[start + i].image.name, frame, ref_mask, cand_mask)
            if mask is not None:
                truth = torch.from_numpy(cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)).long()
                ref_scores.update(ref_mask, truth)
                cand_scores.update(cand_mask, truth)
                gt_images += 1
    stats = OutputStats(name="mask", kind="argmax", agreement=agree / total if total else math.nan)
    ground_truth = None
    if gt_images:
        r, c = ref_scores.compute(), cand_scores.compute()
        ground_truth = GroundTruthScores(gt_images, r["miou"], c["miou"], r["mdice"], c["mdice"])
    class_iou = [None if math.isnan(v) else v for v in iou_from_confusion(between).tolist()]
    size = source or (max(sizes) if sizes else tuple(info.input_size))
    return ParityReport(
        reference=str(ref.path), candidate=str(cand.path), reference_provider=ref.describe(),
        candidate_provider=cand.describe(), precision=info.precision, head=info.head, size=tuple(size),
        images=len(items), data_source=images.source + (f"; frames at {size[0]}x{size[1]}" if source else "; frames at their own sizes"),
        outputs=[stats], class_names=list(info.class_names), class_iou=class_iou, ground_truth=ground_truth,
        thresholds=thresholds, synthetic_data=images.synthetic, worst_image=worst,
    )
