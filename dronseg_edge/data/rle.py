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
from typing import Iterable

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
    # One pass finds every run (0-based start, length, value); each class keeps its own (faster than C binary masks).
    flat = class_map.ravel(order=numpy_order)
    starts = np.flatnonzero(np.r_[flat.size > 0, flat[1:] != flat[:-1]])
    lengths, values = np.diff(np.r_[starts, flat.size]), flat[starts]
    runs = [zip(starts[values == c].tolist(), lengths[values == c].tolist()) for c in range(num_classes)]
    return [(f"{image_id}_{c}", " ".join(f"{start + 1} {n}" for start, n in pairs)) for c, pairs in enumerate(runs)]


def write_submission(rows: Iterable[tuple[str, str]], path: os.PathLike | str) -> Path:
    """Write ``ImageID,EncodedPixels`` rows to ``path`` as CSV, atomically (rows may be a generator)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(HEADER)
            writer.writerows(rows)
    return Path(path)
