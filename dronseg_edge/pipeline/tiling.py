"""Tiled inference: a frame larger than the model input is segmented in overlapping windows.

Shrinking a 4K frame to a 1280x720 input keeps one pixel in nine. Tiling runs the model on windows of
its input size cut from the frame at full resolution and blends the windows' LOGITS where they
overlap, weighted by MONAI's ``sliding_window_inference`` "gaussian" importance map (sigma = 1/8 of
the side, floored at 1e-3 so a border seen by one window keeps a weight): the model sees least
context at a window's edges (mmseg's equal weights leave seams where an edge meets a centre).

Windows are spread evenly, the last ending at the frame's edge, and processed in rows, ``batch`` at a
time. Blended logits are kept only for a band of rows that windows still to come will touch, and
finished into classes (and confidence) as soon as none can change them: a 4K frame in 256x160
windows needs tens of MB (1280x720 ones: 130 MB), not 400 MB of 12-class logits. Every backend gives window logits through the one frame contract
(``Backend.segment(..., logits=True)``), so the blending is written once, in numpy.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterator

import numpy as np

from dronseg_edge.errors import DronsegError
from dronseg_edge.metadata import ModelInfo
from dronseg_edge.option_fields import one_of
from dronseg_edge.runtime.base import Backend
from dronseg_edge.runtime.host import max_probability_u8

log = logging.getLogger(__name__)

TILE_MODES = ("auto", "on", "off")
DEFAULT_OVERLAP = 0.25  # MONAI's default; the windows' share of each side shared with the next one
MAX_OVERLAP = 0.75  # beyond this the windows multiply (1 / (1 - overlap)^2) for little gain
AUTO_FACTOR = 2  # auto tiles a frame at least this many times the model input on a side
SIGMA_SCALE = 0.125  # Gaussian sigma as a fraction of the window side (MONAI's default)
WEIGHT_FLOOR = 1e-3  # lowest weight (MONAI's clamp): border pixels seen by one window keep a weight


def window_starts(length: int, tile: int, overlap: float) -> list[int]:
    """Start offsets of windows of ``tile`` pixels covering ``length`` pixels, neighbours sharing at
    least ``overlap`` of a window, the first at 0 and the last ending at ``length``."""
    if length <= tile:
        return [0]
    stride = max(1, math.floor(tile * (1.0 - overlap)))
    count = math.ceil((length - tile) / stride) + 1
    return [round(i * (length - tile) / (count - 1)) for i in range(count)]


@functools.lru_cache(maxsize=4)
def window_weights(width: int, height: int) -> np.ndarray:
    """(height, width) float32 blending weights: a separable Gaussian, 1 at the centre, >= WEIGHT_FLOOR."""

    def axis(n: int) -> np.ndarray:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
        return np.exp(-(x ** 2) / (2.0 * (SIGMA_SCALE * n) ** 2))

    return np.maximum(np.outer(axis(height), axis(width)), WEIGHT_FLOOR).astype(np.float32)


@dataclass(frozen=True)
class TileGrid:
    """The windows of one frame: ``frame`` and ``tile`` are (W, H); neighbours share at least ``overlap``."""

    frame: tuple[int, int]
    tile: tuple[int, int]
    overlap: float

    @cached_property
    def windows(self) -> list[tuple[int, int]]:
        """(x, y) of every window's top-left corner, row by row."""
        xs, ys = (window_starts(length, tile, self.overlap) for length, tile in zip(self.frame, self.tile))
        return [(x, y) for y in ys for x in xs]

    def batches(self, size: int) -> Iterator[list[tuple[int, int]]]:
        for start in range(0, len(self.windows), size):
            yield self.windows[start:start + size]

    def band_rows(self, size: int) -> int:
        """Rows the blender must hold when windows come ``size`` at a time: the rows from the first
        unfinished row to the bottom of the last window of any batch."""
        height = self.frame[1]
        worst = max(batch[-1][1] - batch[0][1] for batch in self.batches(size))
        return min(height, worst + self.tile[1])


@dataclass
class TilePlan:
    """Which frames a Segmenter tiles, and how.

    ``mode``: auto (a frame at least AUTO_FACTOR times the model input on a side), on (any frame
    larger than the input), off. A frame smaller than the input on either side is never tiled
    (there is nothing to gain: it is resized, as without tiling). ``tile``: (W, H), the model
    input; ``overlap``: 0 <= overlap <= MAX_OVERLAP; ``batch``: windows per inference call.
    ``unable``: why the model cannot tile (no logits), or "" when it can: ``on`` is then refused
    when the plan is made, ``auto`` resizes with a warning the first time a frame would have been tiled.
    """

    mode: str
    tile: tuple[int, int]
    overlap: float = DEFAULT_OVERLAP
    batch: int = 1
    unable: str = ""
    _warned: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        one_of(self.mode, "--tile", TILE_MODES)
        if not 0.0 <= self.overlap <= MAX_OVERLAP:  # NaN fails it too
            raise DronsegError(f"--tile-overlap {self.overlap} must be between 0 and {MAX_OVERLAP} "
                               f"(a share of the window; default {DEFAULT_OVERLAP})")
        if self.mode == "off" and self.overlap != DEFAULT_OVERLAP:  # taken without a word, as if it tiled
            raise DronsegError(f"--tile-overlap {self.overlap:g} has no effect with --tile off (the default): "
                               "add --tile auto or --tile on, or drop it")
        if self.mode == "on" and self.unable:
            raise DronsegError(f"--tile on: {self.unable}")

    def tiles(self, width: int, height: int) -> bool:
        """Whether a frame of ``width`` x ``height`` pixels is tiled."""
        tile_w, tile_h = self.tile
        if self.mode == "off" or width < tile_w or height < tile_h or (width, height) == (tile_w, tile_h):
            return False
        if self.mode == "auto" and width < AUTO_FACTOR * tile_w and height < AUTO_FACTOR * tile_h:
            return False
        if self.unable:
            if not self._warned:
                log.warning("frames of %dx%d would be tiled (--tile auto) but %s; resizing them instead",
                            width, height, self.unable)
                self._warned = True
            return False
        return True

    def describe(self) -> dict:
        """For summary.json."""
        return {"mode": self.mode, "window": list(self.tile), "overlap": self.overlap, "batch": self.batch,
                "unable": self.unable or None}


def tiling_unable(info: ModelInfo, path_name: str) -> str:
    """Why ``info``'s artifact cannot be tiled ("" when it can): tiling blends logits."""
    if info.io == "frames":
        return (f"{path_name} is a frames artifact (export --io frames) whose graph resizes the whole frame "
                "itself; export it with --io tensors to tile")
    if info.head != "logits":
        return f"{path_name} outputs a class map (--head {info.head}), and tiling blends logits; export it with --head logits"
    return ""


class TileBlender:
    """Blends one frame's window logits into its class map (and confidence), row band by row band.

    Windows must be added in ``grid.windows`` order, any number at a time (at most ``batch``); once all
    are, ``classes`` is the (H, W) uint8 class map and ``conf`` the confidence (or None).
    """

    def __init__(self, grid: TileGrid, num_classes: int, weights: np.ndarray, batch: int, confidence: bool):
        self.grid, self.weights = grid, weights
        width, height = grid.frame
        self.rows = grid.band_rows(batch)
        self.logits = np.zeros((num_classes, self.rows, width), np.float32)  # weighted logit sums
        self.weight = np.zeros((self.rows, width), np.float32)  # weight sums
        self.classes = np.empty((height, width), np.uint8)
        self.conf = np.empty((height, width), np.uint8) if confidence else None
        self.top = 0  # frame row of the band's first row
        self.done = 0  # windows added so far

    def add(self, windows: list[tuple[int, int]], logits: np.ndarray) -> None:
        """Accumulate ``logits`` ((n, C, tile_h, tile_w), the model's output for ``windows``)."""
        tile_w, tile_h = self.grid.tile
        for (x, y), window in zip(windows, logits):
            row = y - self.top
            self.logits[:, row:row + tile_h, x:x + tile_w] += window * self.weights
            self.weight[row:row + tile_h, x:x + tile_w] += self.weights
            self.done += 1
        pending = self.grid.windows[self.done][1] if self.done < len(self.grid.windows) else self.grid.frame[1]
        if pending > self.top:
            self._finish(pending)

    def _finish(self, end: int) -> None:
        """Rows ``top`` .. ``end`` are final (no window still to come touches them): finish and drop them."""
        count = end - self.top
        logits, weight = self.logits[:, :count], self.weight[:count]
        self.classes[self.top:end] = logits.argmax(axis=0)  # the weight sum divides every class alike
        if self.conf is not None:
            self.conf[self.top:end] = max_probability_u8(logits / weight)
        for array in (self.logits, self.weight):  # move the band up, zeroing the rows that come free
            array[..., :self.rows - count, :] = array[..., count:, :].copy()
            array[..., self.rows - count:, :] = 0.0
        self.top = end


def segment_tiled(backend: Backend, frame: np.ndarray, plan: TilePlan, confidence: bool, pad_to: int = 1):
    """One (H, W, 3) uint8 frame in windows of the model input at full resolution, their logits
    blended -> ((H, W) uint8 classes, confidence or None, windows, ms per stage)."""
    height, width = frame.shape[:2]
    grid = TileGrid((width, height), plan.tile, plan.overlap)
    tile_w, tile_h = grid.tile
    blender = TileBlender(grid, backend.info.num_classes, window_weights(tile_w, tile_h), plan.batch, confidence)
    stage_ms: Counter = Counter()
    for windows in grid.batches(plan.batch):
        crops = np.stack([frame[y:y + tile_h, x:x + tile_w] for x, y in windows])
        out = backend.segment(crops, logits=True, pad_to=pad_to)
        stage_ms.update(out.stage_ms)
        start = time.perf_counter()
        blender.add(windows, out.logits)
        stage_ms["postprocess"] += (time.perf_counter() - start) * 1e3
    return blender.classes, blender.conf, len(grid.windows), dict(stage_ms)
