"""Colouring class maps and blending them over frames.

On the CPU, ``palette[mask]`` (numpy fancy indexing) plus ``cv2.addWeighted`` costs more per 720p
frame than the model itself; a 256-entry ``cv2.LUT`` does the same several times faster
(docs/facts.md#pipeline-timings). The pipeline's sink threads blend, beside the segmentation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import cv2
import numpy as np

from dronseg_edge.pipeline.request import FILTERED


class Segmented(Protocol):
    """What an overlay needs of a result (pipeline/result.Result has it): the frame, its class map, the filter."""

    frame: np.ndarray
    mask: np.ndarray
    classes: tuple[int, ...] | None


def bgr_lut(palette_rgb: Sequence[Sequence[int]]) -> np.ndarray:
    """A (256, 1, 3) uint8 BGR lookup table for ``cv2.LUT``; class ids past the palette map to black."""
    lut = np.zeros((256, 1, 3), dtype=np.uint8)
    colours = np.asarray(palette_rgb, dtype=np.uint8).reshape(-1, 3)[:256]
    lut[: len(colours), 0] = colours[:, ::-1]
    return lut


def colorize(mask: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Class map (H, W) uint8 -> colour image (H, W, 3) uint8 BGR through ``lut`` (see :func:`bgr_lut`)."""
    return cv2.LUT(cv2.cvtColor(np.ascontiguousarray(mask), cv2.COLOR_GRAY2BGR), lut)


def blend(frame_bgr: np.ndarray, color_bgr: np.ndarray, alpha: float) -> np.ndarray:
    """``frame * (1 - alpha) + color * alpha`` rounded to uint8; both (H, W, 3) BGR."""
    return cv2.addWeighted(frame_bgr, 1.0 - alpha, color_bgr, alpha, 0.0)


def overlay(frame_bgr: np.ndarray, mask: np.ndarray, lut: np.ndarray, alpha: float,
            hidden: int | None = None) -> np.ndarray:
    """The frame (H, W, 3) BGR uint8 with the class map (H, W) coloured over it at opacity ``alpha``;
    pixels of class id ``hidden`` (a class filter's FILTERED) show the frame as it is."""
    blended = blend(frame_bgr, colorize(mask, lut), alpha)
    if hidden is not None:
        np.copyto(blended, frame_bgr, where=(mask == hidden)[..., None])
    return blended


@dataclass(frozen=True, eq=False)
class OverlayPlan:
    """A run's overlay: the one opacity and colour table that the video, the overlay images and the
    ``--show`` window all use (``RunOptions.overlay_plan`` decides whether a run makes one at all).

    ``alpha``: opacity of the class colours over the frame, 0..1; ``lut``: the palette from
    :func:`bgr_lut`.
    """

    alpha: float
    lut: np.ndarray

    def image(self, result: Segmented) -> np.ndarray:
        """The (H, W, 3) uint8 BGR overlay of one result."""
        return overlay(result.frame, result.mask, self.lut, self.alpha,
                       hidden=FILTERED if result.classes is not None else None)
