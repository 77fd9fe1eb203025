"""``--results``: one JSON object per frame, on one line, for other programs (its one owner).

    {"schema": 1, "frame": 42, "name": "000042", "timestamp": 1.4, "wall_time": 1767225600.123,
     "size": [1280, 720], "shares": {"background": 0.21, ..., "sky": 0.0}, "low_confidence": null,
     "classes": {"road": {"pixels": 270336, "bbox": [0, 344, 1280, 376]}, ...}}

- ``frame``: the frame's index in the source (0-based, before ``--stride``); ``name``: its output name
  (the image's stem for image sources);
- ``timestamp``: seconds into the source (a video's presentation time, a camera's or stream's wall
  clock since it opened; null for images);
- ``wall_time``: UNIX time in seconds when the frame's result was ready (for latency against other
  clocks);
- ``size``: [width, height] of the frame in pixels;
- ``shares``: the share of the frame's pixels of each class, 0..1 (under ``--classes`` those classes only);
- ``low_confidence``: with ``--save-conf``, the share of pixels whose most likely class has a
  probability below 0.5; null otherwise;
- ``classes``: for each class present in the frame, its pixel count and bounding box ``[x, y, width,
  height]`` in pixels of the frame (x to the right, y down, from the top-left corner).

A reader checks ``schema`` first: it grows when a field changes meaning or goes away (new fields may
appear within a version).
"""

from __future__ import annotations

import json
import time
from typing import Any

import cv2
import numpy as np

from dronseg_edge.pipeline.result import LOW_CONFIDENCE_U8, Result

SCHEMA = 1


def frame_results(result: Result, with_confidence: bool = False) -> bytes:
    """The ``--results`` line of one segmented frame: the JSON object, ``schema`` first, as one UTF-8
    line ending in a newline."""
    low = result.low_confidence_share(LOW_CONFIDENCE_U8) if with_confidence else None
    line = {"schema": SCHEMA, "frame": result.index, "name": result.name,
            "timestamp": None if result.timestamp is None else round(result.timestamp, 6),
            "wall_time": round(time.time(), 6), "size": list(result.size), "shares": result.shares_by_name(),
            "low_confidence": None if low is None else round(low, 6), "classes": class_regions(result)}
    return (json.dumps(line, separators=(",", ":")) + "\n").encode("utf-8")


def class_regions(result: Result) -> dict[str, dict[str, Any]]:
    """{class name: {"pixels": n, "bbox": [x, y, w, h]}} for each (kept) class present in the frame."""
    regions = {}
    pixels = np.rint(np.asarray(result.shares, dtype=np.float64) * result.mask.size).astype(np.int64)
    for index in np.flatnonzero(pixels):
        if result.classes is not None and index not in result.classes:
            continue
        x, y, w, h = cv2.boundingRect(cv2.compare(result.mask, int(index), cv2.CMP_EQ))
        regions[result.class_names[index]] = {"pixels": int(pixels[index]), "bbox": [x, y, w, h]}
    return regions
