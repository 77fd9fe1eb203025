"""Run-length encoding for the Kaggle submission format (docs/facts.md#kaggle-format).

A submission is a CSV with header ``ImageID,EncodedPixels`` and one row ``{ImageID}_{class}`` per
image and class 0..11; the value is space-separated ``start length`` pairs with 1-based starts,
empty when the class is absent. Pixels are numbered row-major (``order="row"``, C order, along
each image row first) or column-major (``order="column"``, Fortran order). Row-major is the likely
convention (the 0.796 public solution used it; column-major ones scored ~0.6), so it is the
default, but the order stays a visible option everywhere.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from dronseg_edge.atomic import atomic_path
from dronseg_edge.classes import NUM_CLASSES
from dronseg_edge.errors import DronsegError

ORDERS = {"row": "C", "column": "F"}
HEADER = ("ImageID", "EncodedPixels")


def _numpy_order(order: str) -> str:
    try:
        return ORDERS[order]
    except KeyError:
        raise DronsegError(f"unknown pixel order {order!r}; choose 'row' (C order, the likely Kaggle convention) "
                           "or 'column' (Fortran order)") from None


def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal values in a 1-D array: 0-based starts, lengths and the value of each run."""
    if flat.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, flat[:0]
    starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
    lengths = np.diff(np.concatenate((starts, [flat.size])))
    return starts, lengths, flat[starts]


def _format_runs(starts: np.ndarray, lengths: np.ndarray) -> str:
    pairs = np.empty(2 * starts.size, dtype=np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = lengths
    return " ".join(map(str, pairs.tolist()))


def rle_encode(mask: np.ndarray, order: str = "row") -> str:
    """Encode a binary mask (H, W) (bool or 0/1) as ``"start length ..."`` with 1-based starts; "" when empty."""
    numpy_order = _numpy_order(order)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"rle_encode takes one (H, W) mask; got shape {mask.shape}")
    if mask.dtype != np.bool_:
        if mask.size and (mask.min() < 0 or mask.max() > 1):
            raise ValueError("rle_encode takes a binary mask (bool or 0/1); encode a class map with submission_rows")
        mask = mask.astype(bool)
    starts, lengths, values = _runs(mask.ravel(order=numpy_order))
    return _format_runs(starts[values], lengths[values])


def rle_decode(text: str | None, shape: tuple[int, int], order: str = "row", *, source: str = "RLE string") -> np.ndarray:
    """Decode ``"start length ..."`` into an (H, W) bool mask; ``source`` names the string in errors.

    Runs must be positive, inside the image and in increasing, non-overlapping order; anything
    else raises DronsegError. ``None`` or an empty string gives an empty mask.
    """
    numpy_order = _numpy_order(order)
    height, width = (int(v) for v in shape)
    if height <= 0 or width <= 0:
        raise ValueError(f"rle_decode needs a positive (H, W) shape; got {shape}")
    size = height * width
    tokens = (text or "").split()
    if not tokens:
        return np.zeros((height, width), dtype=bool)
    fix = "expected space-separated 'start length' pairs with 1-based starts"
    if len(tokens) % 2:
        raise DronsegError(f"{source}: odd number of values ({len(tokens)}); {fix}")
    try:
        numbers = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        raise DronsegError(f"{source}: not all values are integers (starts with {' '.join(tokens[:4])!r}); {fix}") from None
    starts, lengths = numbers[0::2] - 1, numbers[1::2]
    ends = starts + lengths
    if starts.min() < 0 or lengths.min() < 1:
        raise DronsegError(f"{source}: a start below 1 or a length below 1; {fix}")
    if ends.max() > size:
        raise DronsegError(f"{source}: a run ends at pixel {int(ends.max())} but a {width}x{height} image has {size}; "
                           "check the image size and the pixel order")
    if np.any(starts[1:] < ends[:-1]):
        raise DronsegError(f"{source}: runs overlap or are not in increasing order; {fix}")
    # Runs are disjoint and sorted, so +1 at each start and -1 past each end, summed, is 0/1.
    delta = np.zeros(size + 1, dtype=np.int8)
    delta[starts] += 1
    delta[ends] -= 1
    flat = np.cumsum(delta[:size], dtype=np.int8).astype(bool)
    return flat.reshape((height, width), order=numpy_order)


def submission_rows(image_id: str, class_map: np.ndarray, num_classes: int = NUM_CLASSES,
                    order: str = "row") -> list[tuple[str, str]]:
    """Rows ``(f"{image_id}_{c}", rle)`` for c = 0..num_classes-1 from an (H, W) class map of indices."""
    numpy_order = _numpy_order(order)
    class_map = np.asarray(class_map)
    if class_map.ndim != 2 or not np.issubdtype(class_map.dtype, np.integer):
        raise ValueError(f"submission_rows takes an (H, W) integer class map; got {class_map.dtype} {class_map.shape}")
    if class_map.size and (class_map.min() < 0 or class_map.max() >= num_classes):
        raise DronsegError(f"class map of image {image_id} holds values {int(class_map.min())}..{int(class_map.max())}; "
                           f"a submission needs class indices 0..{num_classes - 1}")
    # One pass finds every run; each class then keeps its own (faster than encoding C binary masks).
    starts, lengths, values = _runs(class_map.ravel(order=numpy_order))
    rows = []
    for c in range(num_classes):
        keep = values == c
        rows.append((f"{image_id}_{c}", _format_runs(starts[keep], lengths[keep])))
    return rows


def write_submission(rows: Iterable[tuple[str, str]], path: os.PathLike | str) -> Path:
    """Write ``ImageID,EncodedPixels`` rows to ``path`` as CSV, atomically (rows may be a generator)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(HEADER)
            writer.writerows(rows)
    return Path(path)


def read_submission(path: os.PathLike | str) -> dict[str, str]:
    """``{ImageID_class: encoded pixels}`` from a submission CSV; DronsegError for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise DronsegError(f"submission {path} not found; check the path")
    result: dict[str, str] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != HEADER:
            raise DronsegError(f"{path} starts with {header}; a submission's header is {','.join(HEADER)}")
        for row in reader:
            if not row:
                continue
            if len(row) != 2:
                raise DronsegError(f"{path} line {reader.line_num} has {len(row)} fields; expected ImageID,EncodedPixels")
            key = row[0].strip()
            if key in result:
                raise DronsegError(f"{path} line {reader.line_num} repeats {key}; each ImageID_class must appear once")
            result[key] = row[1].strip()
    return result


def _binary_dice(pred: np.ndarray, truth: np.ndarray) -> float:
    total = int(pred.sum()) + int(truth.sum())
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(pred & truth)) / total


def score_submission(path: os.PathLike | str, masks: Mapping[str, np.ndarray], order: str = "row",
                     num_classes: int = NUM_CLASSES) -> float:
    """The competition metric of a submission CSV against ground-truth class maps {ImageID: (H, W)}.

    Mean Dice over every (image, class) pair of ``masks`` (1.0 when the class is absent from both);
    rows for images not in ``masks`` are ignored, a missing row raises DronsegError.
    """
    if not masks:
        raise DronsegError(f"no ground-truth masks given to score {path} against")
    rows = read_submission(path)
    scores = []
    for image_id, truth in masks.items():
        truth = np.asarray(truth)
        if truth.ndim != 2:
            raise ValueError(f"ground truth for {image_id} must be an (H, W) class map; got shape {truth.shape}")
        for c in range(num_classes):
            key = f"{image_id}_{c}"
            if key not in rows:
                raise DronsegError(f"{path} has no row {key}; a submission needs one row per image and class 0..{num_classes - 1}")
            pred = rle_decode(rows[key], truth.shape, order, source=f"{path} row {key}")
            scores.append(_binary_dice(pred, truth == c))
    return float(np.mean(scores))
