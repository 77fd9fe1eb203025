"""Where a candidate's classes differ from the reference's, pictured on its worst image.

``check_parity`` keeps the image on which the two agree least (``WorstImage``). A report that failed,
or passed with little margin (``borderline``), is saved with ``NAME.parity.png`` beside
``NAME.parity.json`` (or ``parity --json NAME.json``), which names it (``difference_picture``):

    image | reference classes | candidate classes | differences (image greyed, differing pixels red)
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from dronseg_edge.pictures import caption, colour_classes, fit_width, grid_row, legend, stack_rows, write_image

MIN_TILE, MAX_TILE = 192, 480  # px width of one column
DIFFERENCE_BGR = (0, 0, 255)


class WorstImage:
    """The image with the lowest argmax agreement seen so far, with both class maps (at the compared size)."""

    def __init__(self, class_names: Sequence[str], palette: Sequence[Sequence[int]]):
        self.class_names, self.palette = list(class_names), [list(c) for c in palette]
        self.agreement = math.inf
        self.name = ""
        self.frame: np.ndarray | None = None  # BGR uint8 at the class maps' size
        self.reference: np.ndarray | None = None
        self.candidate: np.ndarray | None = None

    def update(self, name: str, frame_bgr: np.ndarray, reference, candidate) -> None:
        """``reference``/``candidate``: (H, W) class maps (CPU tensors or arrays) of the BGR frame ``frame_bgr`` (any size)."""
        # Class indices (CPU tensors or arrays); int16 keeps the kept copies small.
        reference, candidate = np.asarray(reference, dtype=np.int16), np.asarray(candidate, dtype=np.int16)
        agreement = float((reference == candidate).mean()) if reference.size else 1.0
        if agreement >= self.agreement:
            return
        height, width = reference.shape
        if frame_bgr.shape[:2] != (height, width):
            frame_bgr = cv2.resize(frame_bgr, (width, height), interpolation=cv2.INTER_AREA)
        self.agreement, self.name = agreement, str(name)
        self.frame, self.reference, self.candidate = frame_bgr.copy(), reference.copy(), candidate.copy()

    def picture(self) -> np.ndarray:
        """The BGR picture (see module docstring); export/images.py refuses a comparison on no image."""
        width = min(max(self.frame.shape[1], MIN_TILE), MAX_TILE)
        differ = self.reference != self.candidate
        grey = fit_width(cv2.cvtColor(cv2.cvtColor(self.frame, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR) // 2, width)
        # Shrinking by area keeps every differing pixel visible (nearest sampling would drop isolated ones).
        grey[fit_width(differ.astype(np.float32), width, nearest=width > differ.shape[1]) > 0] = DIFFERENCE_BGR
        tiles = [fit_width(self.frame, width), fit_width(colour_classes(self.reference, self.palette), width, nearest=True),
                 fit_width(colour_classes(self.candidate, self.palette), width, nearest=True), grey]
        labels = [self.name, "reference classes", "candidate classes", f"differ: {100 * differ.mean():.2f}% of pixels (red)"]
        shown = np.union1d(np.unique(self.reference), np.unique(self.candidate)).tolist()
        total = 4 * width
        title = f"worst image: {100 * self.agreement:.2f}% of pixels agree"
        return stack_rows([caption(total, title), grid_row(tiles, labels), legend(self.class_names, self.palette, total, present=shown)])


def picture_path(report_path: Path) -> Path:
    """NAME.parity.json, NAME.json or NAME -> NAME.parity.png: never a picture of the user's."""
    report_path = Path(report_path)
    name = report_path.stem if report_path.suffix.lower() == ".json" else report_path.name
    return report_path.with_name(name.removesuffix(".parity") + ".parity.png")


def save_difference_picture(worst: "WorstImage | None", wanted: bool, report_path: Path) -> str | None:
    """Write the picture of ``worst`` beside ``report_path`` when ``wanted`` (a failed or borderline report);
    return its file name.

    Otherwise (a clear pass, or nothing compared) remove a picture an earlier report left there and return None.
    """
    path = picture_path(report_path)
    image = worst.picture() if (worst is not None and wanted) else None
    if image is None:
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    write_image(path, image)
    return path.name
