"""What a Segmenter makes for each frame besides its class map: a confidence map, a class filter.

A Segmenter has its own defaults (its constructor's ``confidence``, ``classes``) and ``stream()`` may
ask for others per call (``run_inference`` does, from its RunOptions), so each batch is segmented
with one :class:`FrameRequest` instead of reading the Segmenter's attributes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np

from dronseg_edge.classes import IGNORE_INDEX
from dronseg_edge.errors import DronsegError

FILTERED = IGNORE_INDEX  # the mask value of pixels whose class --classes left out (255)


@dataclass(frozen=True)
class FrameRequest:
    """``confidence``: make the (H, W) uint8 maximum-probability map; ``classes``: the class ids to
    keep (None: all), every other pixel becomes :data:`FILTERED` in the mask, the overlay and the counts."""

    confidence: bool = False
    classes: tuple[int, ...] | None = None

    @cached_property
    def keep_lut(self) -> np.ndarray | None:
        """(256,) uint8 lookup table: a kept class id to itself, any other to FILTERED; None keeps all."""
        ids = np.arange(256, dtype=np.uint8)
        return None if self.classes is None else np.where(np.isin(ids, self.classes), ids, np.uint8(FILTERED))


def select_classes(classes: str | Sequence[str | int] | None, class_names: Sequence[str],
                   model: str = "the model") -> tuple[int, ...] | None:
    """Class names or ids (a sequence, or one comma-separated string such as "person,car" or "1,3"; names in any
    case; one id too) -> their sorted ids.

    Raises a one-line DronsegError listing the model's classes for a name or id it does not have.
    """
    if classes is None:
        return None
    if isinstance(classes, (int, np.integer)):  # one id: ``classes=1``
        classes = [classes]
    items = [item.strip() if isinstance(item, str) else item
             for item in (classes.split(",") if isinstance(classes, str) else classes)]
    items = [item for item in items if item != ""]
    if not items:
        raise DronsegError("--classes is empty: give one or more class names, e.g. --classes person,car")
    lookup = {name.lower(): index for index, name in enumerate(class_names)}
    ids, unknown = set(), []
    for item in items:
        if isinstance(item, str) and item.isdigit() and item.lower() not in lookup:  # "1,3": ids, as --classes takes
            item = int(item)
        if isinstance(item, str) and item.lower() in lookup:
            ids.add(lookup[item.lower()])
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool) and 0 <= item < len(class_names):
            ids.add(int(item))
        else:
            unknown.append(str(item))
    if unknown:
        raise DronsegError(f"--classes {','.join(unknown)}: {model} has no such class; its classes are "
                           f"{', '.join(class_names)}")
    return tuple(sorted(ids))
