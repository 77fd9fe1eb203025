"""Blending class maps over frames, coloured by :func:`~dronseg_edge.pictures.colorize`.

On the CPU, ``palette[mask]`` (numpy fancy indexing) plus ``cv2.addWeighted`` costs more per 720p
frame than the model itself; a 256-entry ``cv2.LUT`` does the same several times faster
(docs/facts.md#pipeline-timings). The pipeline's sink threads blend, beside the segmentation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np

from dronseg_edge.pictures import TEXT_HEIGHT, colorize, legend
from dronseg_edge.pipeline.request import FILTERED

LEGEND_WIDTH = 120  # px: one swatch and name per row (pictures.legend's cell)
LEGEND_OPACITY = 0.75
LEGEND_MARGIN = 8  # px from the frame's bottom-left corner
LEGEND_MAX_SHARE = (0.4, 0.6)  # at most this share of the frame's width and height: a small frame gets none
_legend_strip = functools.lru_cache(maxsize=64)(legend)  # the strips of a run: a few combinations of classes, reused


def overlay(frame_bgr: np.ndarray, mask: np.ndarray, lut: np.ndarray, alpha: float,
            hidden: int | None = None) -> np.ndarray:
    """The frame (H, W, 3) BGR uint8 with the class map (H, W) coloured over it at opacity ``alpha``
    (``frame * (1 - alpha) + colour * alpha``, rounded); pixels of class id ``hidden`` (a class filter's
    FILTERED) show the frame as it is."""
    blended = cv2.addWeighted(frame_bgr, 1.0 - alpha, colorize(mask, lut), alpha, 0.0)
    if hidden is not None:
        np.copyto(blended, frame_bgr, where=(mask == hidden)[..., None])
    return blended


@dataclass(frozen=True, eq=False)
class OverlayPlan:
    """A run's overlay: the one opacity and colour table that the video, the overlay images and the
    ``--show`` window all use (``RunOptions.overlay_plan`` decides whether a run makes one at all).

    ``alpha``: opacity of the class colours over the frame, 0..1; ``lut``: the palette from
    :func:`~dronseg_edge.pictures.bgr_lut`; ``legend``: the class names, to draw the legend of the classes seen so far
    (``--legend``; None: no legend); ``colours_only`` (``--stream-what color``, at alpha 1): classes a filter left
    out are black, as in ``--save-color``, where every other overlay shows the frame there.

    Each result's image is made once and kept on it (``Result.overlays``), so the video, the live
    streams and the preview share one blend per frame.
    """

    alpha: float
    lut: np.ndarray
    legend: tuple[str, ...] | None = None
    colours_only: bool = False

    def image(self, result) -> np.ndarray:
        """The (H, W, 3) uint8 BGR overlay of one pipeline/result.Result (with the legend of its
        ``seen_classes``), made once and kept in its ``overlays``."""
        if self not in result.overlays:
            # Left-out classes show the frame, at --alpha 1 too (they were black, as in the colours-only picture)
            image = overlay(result.frame, result.mask, self.lut, self.alpha,
                            hidden=FILTERED if result.classes is not None and not self.colours_only else None)
            if self.legend is not None:
                draw_legend(image, self.legend, self.lut, result.seen_classes)
            result.overlays[self] = image
        return result.overlays[self]


def draw_legend(image: np.ndarray, names: Sequence[str], lut: np.ndarray, present: Sequence[int] | None) -> None:
    """Draw the colour and name of each class in ``present`` (class ids) into the bottom-left corner
    of ``image`` (H, W, 3) uint8 BGR, in place, at 75 % opacity. Small and out of the way: at most
    40 % of the width and 60 % of the height (classes past that are left out), none on a frame too
    small for one row."""
    height, width = image.shape[:2]
    room = int(height * LEGEND_MAX_SHARE[1]) - LEGEND_MARGIN
    shown = tuple(sorted(int(c) for c in (present or ()) if 0 <= int(c) < len(names)))[:max(room, 0) // TEXT_HEIGHT]
    if not shown or LEGEND_WIDTH + LEGEND_MARGIN > width * LEGEND_MAX_SHARE[0]:
        return
    palette = tuple(tuple(int(v) for v in lut[i, 0, ::-1]) for i in range(len(names)))
    strip = _legend_strip(tuple(names), palette, LEGEND_WIDTH, shown)
    top, left = height - LEGEND_MARGIN - strip.shape[0], LEGEND_MARGIN
    corner = image[top:top + strip.shape[0], left:left + strip.shape[1]]
    corner[:] = cv2.addWeighted(strip, LEGEND_OPACITY, corner, 1.0 - LEGEND_OPACITY, 0.0)
