"""One segmented frame (:class:`Result`), with its picture (``plot``) and its files (``save``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dronseg_edge.classes import PALETTE
from dronseg_edge.errors import DronsegError
from dronseg_edge.option_fields import number
from dronseg_edge.pictures import bgr_lut, colorize, write_image
from dronseg_edge.pipeline.overlay import overlay
from dronseg_edge.pipeline.request import FILTERED

LOW_CONFIDENCE = 0.5  # a pixel whose most likely class has a probability below this is "low confidence"
LOW_CONFIDENCE_U8 = 128  # the same on the uint8 confidence map (x 255): values below 128


@dataclass
class Result:
    """One segmented frame.

    ``mask``: (H, W) uint8 class indices at the frame's own size (with a class filter, the pixels
    of the classes left out are FILTERED, 255); ``shares``: (C,) fraction of the frame's pixels per
    class (sums to 1 without a filter); ``frame``: the (H, W, 3) uint8 BGR input; ``confidence``:
    (H, W) uint8 maximum class probability x 255 when asked for (``Segmenter(confidence=True)``) or
    given by a frames artifact exported with ``--confidence``, else None; ``timings``: ms per stage
    for this frame (decode, preprocess, inference, postprocess); ``classes``: the class ids kept by
    a filter (None: all); ``tiles``: windows the frame was segmented in (0: resized whole);
    ``read_at``: ``time.monotonic()`` when the frame was read (FrameRecord.read_at); ``seen_classes``:
    the class ids present in the source up to this frame, for the overlay's legend (set by
    ``run_inference``); ``overlays``: each OverlayPlan's image of this frame, made once for every sink; ``fps``: a
    live source's rate at this frame (FrameRecord.fps).
    """

    mask: np.ndarray
    shares: np.ndarray
    class_names: list[str]
    frame: np.ndarray
    index: int = 0
    timestamp: float | None = None
    name: str = ""
    source: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    confidence: np.ndarray | None = None
    palette: list = field(default_factory=lambda: [list(c) for c in PALETTE])
    classes: tuple[int, ...] | None = None
    tiles: int = 0
    read_at: float | None = None
    seen_classes: tuple[int, ...] | None = None
    overlays: dict = field(default_factory=dict, repr=False, compare=False)
    fps: float | None = None

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.mask.shape[1]), int(self.mask.shape[0])

    def shares_by_name(self, digits: int = 6) -> dict[str, float]:
        """{class name: share of the frame's pixels}, only the kept classes under a filter."""
        return {name: round(float(share), digits) for index, (name, share) in enumerate(zip(self.class_names, self.shares))
                if self.classes is None or index in self.classes}

    def low_confidence_share(self, threshold_u8: int = LOW_CONFIDENCE_U8) -> float | None:
        """Share of pixels whose confidence is below ``threshold_u8`` / 255 (None without a confidence map)."""
        if self.confidence is None:
            return None
        return float(np.count_nonzero(self.confidence < threshold_u8)) / max(self.confidence.size, 1)

    def plot(self, alpha: float = 0.5) -> np.ndarray:
        """The (H, W, 3) uint8 BGR frame with the class colours over it at opacity ``alpha`` (0..1);
        pixels a class filter left out show the frame as it is."""
        if not 0.0 <= number(alpha, "alpha") <= 1.0:  # "0.5" was a TypeError, True an OpenCV error
            raise DronsegError(f"alpha {alpha} must be between 0 (frame only) and 1 (colours only)")
        return overlay(self.frame, self.mask, bgr_lut(self.palette), alpha,
                       hidden=FILTERED if self.classes is not None else None)

    def color_mask(self) -> np.ndarray:
        """The class map in the palette's colours, (H, W, 3) uint8 BGR (filtered pixels black)."""
        return colorize(self.mask, bgr_lut(self.palette))

    def save(self, folder: str | Path, name: str | None = None, alpha: float = 0.5) -> dict[str, Path]:
        """Write ``{name}_mask.png`` (class indices), ``{name}_color.png``, ``{name}_overlay.jpg`` and,
        with a confidence map, ``{name}_conf.png`` into ``folder`` (created), each atomically.
        ``name``: default the frame's own name (or its index). Returns {kind: path}."""
        stem = name or self.name or f"{self.index:06d}"
        images = {"mask": (".png", self.mask), "color": (".png", self.color_mask()), "overlay": (".jpg", self.plot(alpha))}
        if self.confidence is not None:
            images["conf"] = (".png", self.confidence)
        return {kind: write_image(Path(folder) / f"{stem}_{kind}{suffix}", image) for kind, (suffix, image) in images.items()}
