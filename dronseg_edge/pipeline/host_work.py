"""The Segmenter's work without torch: numpy in, numpy out, pre/post-processing with OpenCV.

For ``.onnx`` and ``.engine`` files on the CPU (where OpenCV's uint8 resize beats converting the
whole frame to float first: docs/facts.md#pipeline-timings), on a GPU when torch is not installed,
and always for a frames artifact (``export --io frames``): its graph resizes, normalises,
upsamples and takes the argmax itself, so its frames go in as they are (stacked, uint8, one batch
per frame size) and its uint8 class map, already at the frame's size, is used as it comes out,
with the uint8 confidence map when the file was exported with ``--confidence``. On CUDA only
those uint8 bytes cross the bus. Frames the Segmenter's TilePlan tiles are cut into windows at
full resolution and blended (pipeline/tiling.py).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from itertools import groupby

import cv2
import numpy as np

from dronseg_edge.metadata import ModelInfo
from dronseg_edge.pipeline.request import FrameRequest
from dronseg_edge.pipeline.sources import FrameRecord
from dronseg_edge.pipeline.tiling import TileBlender, TilePlan, window_weights
from dronseg_edge.runtime.base import Backend
from dronseg_edge.runtime.batching import pad_batch
from dronseg_edge.runtime.host import (class_counts, class_map_host, max_probability_u8, preprocess_host,
                                       resize_confidence)

CONFIDENCE_OUTPUT = "confidence"  # the name export/embedded.py gives a frames graph's second output


class Stopwatch:
    """Milliseconds per stage, summed: ``lap(name)`` charges the time since the last lap to ``name``."""

    def __init__(self):
        self.ms: dict[str, float] = defaultdict(float)
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.ms[name] += (now - self._last) * 1e3
        self._last = now


@dataclass
class HostPending:
    records: list[FrameRecord]
    masks: list[np.ndarray]
    counts: list[np.ndarray]
    confidences: list[np.ndarray | None]
    stage_ms: dict[str, float]
    tiles: list[int]

    def finish(self):
        """(masks, counts, overlays, confidences, ms per stage for the whole batch, windows per frame); all done already."""
        return self.masks, self.counts, [None] * len(self.masks), self.confidences, self.stage_ms, self.tiles


class HostWork:
    """Runs batches through ``backend`` with numpy arrays, synchronously."""

    name = "host"

    def __init__(self, backend: Backend, info: ModelInfo, infer_batch: int, upsample_logits: bool, tiling: TilePlan):
        self.backend, self.info, self.infer_batch = backend, info, infer_batch
        self.upsample_logits = upsample_logits
        self.tiling = tiling
        self._weights: np.ndarray | None = None

    def submit(self, records: list[FrameRecord], request: FrameRequest) -> HostPending:
        # request.overlay_alpha: the overlay is blended by the consumer on the CPU (OverlayPlan), not here.
        watch = Stopwatch()
        if self.info.io == "frames":
            masks, confidences = self._frames_graph(records, watch)
            tiles = [0] * len(records)
        else:
            masks, confidences, tiles = [None] * len(records), [None] * len(records), [0] * len(records)
            tiled = [self.tiling.tiles(r.frame.shape[1], r.frame.shape[0]) for r in records]
            whole = [i for i, t in enumerate(tiled) if not t]
            if whole:
                for i, (mask, conf) in zip(whole, self._resized([records[i] for i in whole], request.confidence, watch)):
                    masks[i], confidences[i] = mask, conf
            for i in (i for i, t in enumerate(tiled) if t):
                masks[i], confidences[i], tiles[i] = self._tiled(records[i].frame, request.confidence, watch)
        if request.keep_lut is not None:
            masks = [cv2.LUT(m, request.keep_lut) for m in masks]
        counts = [class_counts(m, self.info.num_classes) for m in masks]
        watch.lap("postprocess")
        return HostPending(records, masks, counts, confidences, dict(watch.ms), tiles)

    def _resized(self, records: list[FrameRecord], confidence: bool, watch: Stopwatch):
        """The frames resized whole to the model input: one padded batch."""
        batch, real = pad_batch(preprocess_host([r.frame for r in records], self.info), self.infer_batch)
        watch.lap("preprocess")
        out = self.backend.infer(batch)
        watch.lap("inference")
        return [self._class_map(out[i], *r.frame.shape[:2], confidence) for i, r in enumerate(records)]

    def _class_map(self, out: np.ndarray, height: int, width: int, confidence: bool):
        """One frame's output -> ((H, W) uint8 classes, (H, W) uint8 confidence or None)."""
        if out.ndim == 3 and self.upsample_logits and out.shape[1:] != (height, width):
            # Bilinear logits, then argmax (upsample="logits"): cv2 resizes all C channels in one call.
            logits = cv2.resize(np.ascontiguousarray(out.transpose(1, 2, 0), np.float32), (width, height),
                                interpolation=cv2.INTER_LINEAR).reshape(height, width, -1)
            conf = max_probability_u8(logits.transpose(2, 0, 1)) if confidence else None
            return logits.argmax(axis=2).astype(np.uint8), conf
        conf = None
        if confidence and out.ndim == 3:
            conf = resize_confidence(max_probability_u8(np.asarray(out, np.float32)), height, width)
        return class_map_host(out, height, width), conf

    def _tiled(self, frame: np.ndarray, confidence: bool, watch: Stopwatch):
        """One frame in windows of the model input at full resolution, logits blended (pipeline/tiling.py)."""
        height, width = frame.shape[:2]
        grid = self.tiling.grid(width, height)
        if self._weights is None:
            self._weights = window_weights(*self.info.input_size)
        tile_w, tile_h = grid.tile
        blender = TileBlender(grid, self.info.num_classes, self._weights, self.tiling.batch, confidence)
        # A fixed-batch artifact takes its batch exactly; on a GPU a dynamic one gets full batches too (one
        # shape: one CUDA graph, one TensorRT binding), on the CPU only the windows there are.
        pad_to = self.infer_batch if not self.info.dynamic else (
            self.tiling.batch if self.backend.device.type == "cuda" else 1)
        for windows in grid.batches(self.tiling.batch):
            crops = [frame[y:y + tile_h, x:x + tile_w] for x, y in windows]
            batch, real = pad_batch(preprocess_host(crops, self.info), pad_to)
            watch.lap("preprocess")
            out = self.backend.infer(batch)
            watch.lap("inference")
            blender.add(windows, out[:real])
            watch.lap("postprocess")
        classes, conf = blender.result()
        return classes, conf, len(grid.windows)

    def _frames_graph(self, records: list[FrameRecord], watch: Stopwatch):
        """A frames graph: uint8 frames in as they are, one call per run of same-sized frames."""
        masks, confidences = [], []
        pad_to = 1 if self.info.dynamic else self.infer_batch  # runs of one size vary in length anyway
        for _, group in groupby(records, key=lambda r: r.frame.shape):
            group = list(group)
            batch, real = pad_batch(np.stack([np.ascontiguousarray(r.frame) for r in group]), pad_to)
            watch.lap("preprocess")
            out = self.backend.infer(batch)
            confidence = getattr(self.backend, "last_outputs", {}).get(CONFIDENCE_OUTPUT)
            watch.lap("inference")
            masks += [np.asarray(out[i], np.uint8) for i in range(real)]
            confidences += [None if confidence is None else np.asarray(confidence[i], np.uint8) for i in range(real)]
        return masks, confidences
