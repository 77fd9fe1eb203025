"""Labelled image grids for people to look at: training's validation mosaics (train/mosaics.py) and
parity's difference picture (export/parity_picture.py); and the one class-map colouring (a 256-entry
``cv2.LUT``: :func:`bgr_lut`, :func:`colorize`) that they and the pipeline's overlays use; and the one
resize of a frame to a model's input (:func:`resize_frame`), training's and inference's. numpy +
OpenCV only, written atomically as PNG.

Images here are (H, W, 3) uint8 BGR, as OpenCV draws and writes them; class maps (H, W) integer.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from dronseg_edge.atomic import atomic_path
from dronseg_edge.errors import DronsegError

TEXT_HEIGHT = 22  # px of a caption strip
FONT = cv2.FONT_HERSHEY_SIMPLEX


def bgr_lut(palette_rgb: Sequence[Sequence[int]]) -> np.ndarray:
    """A (256, 1, 3) uint8 BGR lookup table for ``cv2.LUT``; class ids past the palette map to black."""
    lut = np.zeros((256, 1, 3), dtype=np.uint8)
    colours = np.asarray(palette_rgb, dtype=np.uint8).reshape(-1, 3)[:256]
    lut[: len(colours), 0] = colours[:, ::-1]
    return lut


def colorize(mask: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Class map (H, W) uint8 -> colour image (H, W, 3) uint8 BGR through ``lut`` (see :func:`bgr_lut`)."""
    return cv2.LUT(cv2.cvtColor(np.ascontiguousarray(mask), cv2.COLOR_GRAY2BGR), lut)


def colour_classes(classes: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """(H, W) class indices -> (H, W, 3) BGR colours of the RGB ``palette``; indices past it (255, ignored) are black."""
    return colorize(np.clip(np.asarray(classes), 0, 255).astype(np.uint8), bgr_lut(palette))


def resize_frame(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """A uint8 frame at a model's input size, as training and every inference path make it: INTER_AREA
    when both sides shrink or stay (antialiased), bilinear otherwise."""
    h, w = frame.shape[:2]
    if (w, h) == (width, height):
        return frame
    if width <= w and height <= h:
        return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
    if frame.dtype != np.uint8:
        return cv2.resize(frame, (width, height), interpolation=cv2.INTER_LINEAR)
    # OpenCV's uint8 INTER_LINEAR weighs in 11-bit fixed point, which a frames graph's MatMuls cannot repeat
    # (one grey level off on 12 % of values): in float, rounded to even, as the graph does.
    enlarged = cv2.resize(frame.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.rint(enlarged).astype(np.uint8)


def fit_width(image: np.ndarray, width: int, nearest: bool = False) -> np.ndarray:
    """``image`` scaled to ``width`` px wide, aspect kept (nearest for class maps, so no new colours appear)."""
    height = max(1, round(image.shape[0] * width / image.shape[1]))
    if (image.shape[1], image.shape[0]) == (width, height):
        return image
    shrink = width < image.shape[1]
    mode = cv2.INTER_NEAREST_EXACT if nearest else (cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return cv2.resize(image, (width, height), interpolation=mode)


def caption(width: int, text: str) -> np.ndarray:
    """A dark strip ``width`` px wide with ``text`` in white (cut to fit)."""
    strip = np.full((TEXT_HEIGHT, width, 3), 32, np.uint8)
    while len(text) > 1 and cv2.getTextSize(text, FONT, 0.45, 1)[0][0] > width - 8:
        text = text[:-1]  # Hershey fonts are ASCII only: no ellipsis character
    cv2.putText(strip, text, (4, TEXT_HEIGHT - 7), FONT, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    return strip


def grid_row(tiles: Sequence[np.ndarray], labels: Sequence[str]) -> np.ndarray:
    """Tiles of one height side by side, each with its caption above."""
    return np.hstack([np.vstack([caption(t.shape[1], label), t]) for t, label in zip(tiles, labels)])


def legend(names: Sequence[str], palette: Sequence[Sequence[int]], width: int, present: Sequence[int]) -> np.ndarray:
    """Colour swatches with the names of the classes ``present`` (class indices), wrapped to ``width`` px."""
    chosen = sorted(set(int(i) for i in present if 0 <= i < len(names)))
    cell = 120
    per_row = max(1, width // cell)
    rows = max(1, -(-len(chosen) // per_row))
    strip = np.full((rows * TEXT_HEIGHT, width, 3), 32, np.uint8)
    for n, index in enumerate(chosen):
        y, x = (n // per_row) * TEXT_HEIGHT, (n % per_row) * cell
        colour = tuple(int(c) for c in np.asarray(palette[index], np.uint8)[::-1])
        cv2.rectangle(strip, (x + 4, y + 5), (x + 16, y + TEXT_HEIGHT - 5), colour, -1)
        cv2.rectangle(strip, (x + 4, y + 5), (x + 16, y + TEXT_HEIGHT - 5), (200, 200, 200), 1)
        cv2.putText(strip, str(names[index])[:13], (x + 21, y + TEXT_HEIGHT - 7), FONT, 0.42, (255, 255, 255), 1, cv2.LINE_AA)
    return strip


def stack_rows(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Rows of possibly different widths one above the other, padded dark on the right."""
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=32) for r in rows]
    return np.vstack(padded)


def write_image(path: os.PathLike | str, image: np.ndarray) -> Path:
    """Encode ``image`` ((H, W, 3) BGR, or (H, W)) by ``path``'s suffix (PNG, or JPEG at quality 90) and
    write it atomically."""
    path = Path(path)
    params = [cv2.IMWRITE_JPEG_QUALITY, 90] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(path.suffix, np.ascontiguousarray(image), params)
    if not ok:
        raise DronsegError(f"OpenCV cannot encode {path} ({image.dtype} {image.shape})")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())
    return path
