"""Reading and scoring a submission CSV, as the competition's server does: test helpers only (the package
writes submissions, data/rle.py; it never needs to read one back)."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Mapping

import numpy as np

from dronseg_edge.classes import NUM_CLASSES
from dronseg_edge.data.rle import HEADER, _numpy_order
from dronseg_edge.errors import DronsegError


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
