"""Colouring class maps and blending them over frames.

On the CPU, ``palette[mask]`` (numpy fancy indexing) plus ``cv2.addWeighted`` costs more per 720p
frame than the model itself; a 256-entry ``cv2.LUT`` does the same several times faster
(docs/facts.md#pipeline-timings). A Segmenter on a GPU blends there (:func:`overlay_torch`), so
only the finished uint8 image is copied back; both paths live here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import cv2
import numpy as np

from dronseg_edge.pipeline.request import FILTERED

if TYPE_CHECKING:  # result.py imports this module
    import torch

    from dronseg_edge.pipeline.result import Result


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


def palette_tensor(palette_rgb: Sequence[Sequence[int]], device: "torch.device") -> "torch.Tensor":
    """(256, 3) float32 BGR colours on ``device`` (ids past the palette are black), for :func:`overlay_torch`."""
    import torch

    return torch.from_numpy(bgr_lut(palette_rgb)[:, 0].astype(np.float32)).to(device)


def overlay_torch(frames_bgr: "torch.Tensor", masks: "torch.Tensor", palette_bgr: "torch.Tensor", alpha: float,
                  hidden: int | None = None) -> "torch.Tensor":
    """GPU form of :func:`overlay`: frames (N, H, W, 3) uint8 BGR, masks (N, H, W) uint8 -> (N, H, W, 3) uint8.

    Rounds half up like ``cv2.addWeighted``, so both paths agree to within one grey level; pixels of
    class id ``hidden`` keep the frame's own colour.
    """
    import torch

    colours = palette_bgr.index_select(0, masks.reshape(-1).long()).view(*masks.shape, 3)
    mixed = frames_bgr.float().mul_(1.0 - alpha).add_(colours, alpha=alpha)
    mixed = mixed.add_(0.5).clamp_(0, 255).to(torch.uint8)
    if hidden is not None:
        mixed = torch.where((masks == hidden).unsqueeze(-1), frames_bgr, mixed)
    return mixed


@dataclass(frozen=True, eq=False)
class OverlayPlan:
    """A run's overlay: the one opacity and colour table that the video, the overlay images and the
    ``--show`` window all use (``RunOptions.overlay_plan`` decides whether a run makes one at all).

    ``alpha``: opacity of the class colours over the frame, 0..1; ``lut``: the palette from
    :func:`bgr_lut`. The Segmenter is given the same ``alpha`` and blends on a GPU, so a consumer
    takes that image when a result carries one and blends on the CPU only when it does not.
    """

    alpha: float
    lut: np.ndarray

    def image(self, result: "Result") -> np.ndarray:
        """The (H, W, 3) uint8 BGR overlay of one result."""
        if result.overlay is not None:
            return result.overlay
        return overlay(result.frame, result.mask, self.lut, self.alpha,
                       hidden=FILTERED if result.classes is not None else None)
