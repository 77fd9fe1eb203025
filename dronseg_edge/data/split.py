"""Multilabel stratified train/validation split on per-image class presence.

One shuffle split (``iterative-stratification``'s MultilabelStratifiedShuffleSplit, as in the
reference recipe) keeps each class's share of images about equal in train and validation, which
matters for rare classes such as boat (66 of 3269 AeroScapes images).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dronseg_edge.atomic import write_json_atomic
from dronseg_edge.classes import CLASS_NAMES
from dronseg_edge.errors import DronsegError


def pick_evenly(items: list, limit: int | None) -> list:
    """At most ``limit`` items spread over the whole list, first and last included (neighbouring video frames
    say little new)."""
    if limit is None or limit <= 0 or len(items) <= limit:
        return list(items)
    index = np.linspace(0, len(items) - 1, num=limit).round().astype(int)
    return [items[i] for i in sorted(set(index.tolist()))]


def stratified_split(ids: list[str], presence: np.ndarray, val_fraction: float = 0.2, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split ``ids`` with ``presence`` (N, C) bool into (train_ids, val_ids), both in input order."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    if not 0.0 < val_fraction < 1.0:
        raise DronsegError(f"--val-fraction {val_fraction} must be between 0 and 1 (exclusive), e.g. 0.2")
    if len(ids) < 2 or math.ceil(len(ids) * val_fraction) >= len(ids):  # scikit-learn's rounding of the split
        raise DronsegError(f"cannot split {len(ids)} images with --val-fraction {val_fraction}: need at least one image on each side")
    splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=val_fraction, random_state=seed)
    sides = [sorted(side.tolist()) for side in next(splitter.split(np.zeros((len(ids), 1)), presence.astype(int)))]
    for empty, full in ((0, 1), (1, 0)):  # iterative stratification can leave a side of a few images empty
        if not sides[empty]:
            moved = max(sides[full], key=lambda i: int(presence[i].sum()))  # the image showing the most classes
            sides[full].remove(moved)
            sides[empty].append(moved)
    return [ids[i] for i in sides[0]], [ids[i] for i in sides[1]]


def save_split(path: Path, train_ids: list[str], val_ids: list[str], *, seed: int, val_fraction: float,
               all_ids: list[str], presence: np.ndarray) -> Path:
    """Write ``split.json`` (atomically) with the IDs and per-class presence ratios (``presence``: (N, C) bool
    of ``all_ids``): a human-readable copy, as eval, export and resume read the split the checkpoint carries."""
    index = {image_id: i for i, image_id in enumerate(all_ids)}
    train_r, val_r = (presence[[index[i] for i in ids]].mean(axis=0).round(4).tolist() if ids else [0.0] * presence.shape[1]
                      for ids in (train_ids, val_ids))
    return write_json_atomic(path, {"seed": seed, "val_fraction": val_fraction, "train": train_ids, "val": val_ids,
                                    "presence": {name: {"train": t, "val": v} for name, t, v in zip(CLASS_NAMES, train_r, val_r)}})

