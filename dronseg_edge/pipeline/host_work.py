"""The Segmenter's work without torch: numpy in, numpy out, pre/post-processing with OpenCV.

For ``.onnx`` and ``.engine`` files on the CPU (where OpenCV's uint8 resize beats converting the
whole frame to float first: docs/facts.md#pipeline-timings), on a GPU when torch is not installed,
and always for a frames artifact (``export --io frames``): its graph resizes, normalises,
upsamples and takes the argmax itself, so its frames go in as they are (stacked, uint8, one batch
per frame size) and its uint8 class map, already at the frame's size, is used as it comes out,
with the uint8 confidence map when the file was exported with ``--confidence``. On CUDA only
those uint8 bytes cross the bus.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from itertools import groupby

import cv2
import numpy as np

from dronseg_edge.metadata import ModelInfo
from dronseg_edge.pipeline.sources import FrameRecord
from dronseg_edge.runtime.base import Backend
from dronseg_edge.runtime.batching import pad_batch
from dronseg_edge.runtime.host import class_counts, class_map_host, preprocess_host

CONFIDENCE_OUTPUT = "confidence"  # the name export/embedded.py gives a frames graph's second output


@dataclass
class HostPending:
    records: list[FrameRecord]
    masks: list[np.ndarray]
    counts: list[np.ndarray]
    confidences: list[np.ndarray | None]
    stage_ms: dict[str, float]

    def finish(self):
        """(masks, counts, overlays, confidences, ms per stage for the whole batch); all done already."""
        return self.masks, self.counts, [None] * len(self.masks), self.confidences, self.stage_ms


class HostWork:
    """Runs batches through ``backend`` with numpy arrays, synchronously."""

    name = "host"

    def __init__(self, backend: Backend, info: ModelInfo, infer_batch: int, upsample_logits: bool):
        self.backend, self.info, self.infer_batch = backend, info, infer_batch
        self.upsample_logits = upsample_logits

    def submit(self, records: list[FrameRecord], overlay_alpha: float | None = None) -> HostPending:
        # overlay_alpha: the overlay is blended by the consumer on the CPU (OverlayPlan), not here.
        if self.info.io == "frames":
            return self._submit_frames(records)
        start = time.perf_counter()
        batch, real = pad_batch(preprocess_host([r.frame for r in records], self.info), self.infer_batch)
        marks = [start, time.perf_counter()]
        out = self.backend.infer(batch)
        marks.append(time.perf_counter())
        masks = [self._class_map(out[i], *r.frame.shape[:2]) for i, r in enumerate(records)]
        counts = [class_counts(m, self.info.num_classes) for m in masks]
        marks.append(time.perf_counter())
        return HostPending(records, masks, counts, [None] * len(records), _stages(marks))

    def _class_map(self, out: np.ndarray, height: int, width: int) -> np.ndarray:
        if out.ndim == 3 and self.upsample_logits and out.shape[1:] != (height, width):
            # Bilinear logits, then argmax (upsample="logits"): cv2 resizes all C channels in one call.
            logits = cv2.resize(np.ascontiguousarray(out.transpose(1, 2, 0), np.float32), (width, height),
                                interpolation=cv2.INTER_LINEAR)
            return logits.reshape(height, width, -1).argmax(axis=2).astype(np.uint8)
        return class_map_host(out, height, width)

    def _submit_frames(self, records: list[FrameRecord]) -> HostPending:
        """A frames graph: uint8 frames in as they are, one call per run of same-sized frames."""
        masks, confidences = [], []
        totals = {"preprocess": 0.0, "inference": 0.0, "postprocess": 0.0}
        for _, group in groupby(records, key=lambda r: r.frame.shape):
            group = list(group)
            start = time.perf_counter()
            batch, real = pad_batch(np.stack([np.ascontiguousarray(r.frame) for r in group]), self.infer_batch)
            marks = [start, time.perf_counter()]
            out = self.backend.infer(batch)
            confidence = getattr(self.backend, "last_outputs", {}).get(CONFIDENCE_OUTPUT)
            marks.append(time.perf_counter())
            masks += [np.asarray(out[i], np.uint8) for i in range(real)]
            confidences += [None if confidence is None else np.asarray(confidence[i], np.uint8) for i in range(real)]
            marks.append(time.perf_counter())
            for name, ms in _stages(marks).items():
                totals[name] += ms
        start = time.perf_counter()
        counts = [class_counts(m, self.info.num_classes) for m in masks]
        totals["postprocess"] += (time.perf_counter() - start) * 1e3
        return HostPending(records, masks, counts, confidences, totals)


def _stages(marks: list[float]) -> dict[str, float]:
    names = ("preprocess", "inference", "postprocess")
    return {name: (marks[i + 1] - marks[i]) * 1e3 for i, name in enumerate(names[:len(marks) - 1])}
