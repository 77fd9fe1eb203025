"""The 12 AeroScapes classes, their colours, the input normalisation and the pixels of each class in a map."""

from __future__ import annotations

import numpy as np

CLASS_NAMES: tuple[str, ...] = ("background", "person", "bike", "car", "drone", "boat", "animal", "obstacle",
                               "construction", "vegetation", "road", "sky")
NUM_CLASSES = len(CLASS_NAMES)

# Label value written where a pixel has no ground truth (augmentation borders); losses and metrics skip it.
IGNORE_INDEX = 255

# The AeroScapes colour map (RGB), so overlays look like the data set's own visualisations.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (192, 128, 128), (0, 128, 0), (128, 128, 128), (128, 0, 0), (0, 0, 128),
    (192, 0, 128), (192, 0, 0), (192, 128, 0), (0, 64, 0), (128, 128, 0), (0, 128, 128),
)

# ImageNet statistics (RGB, for images scaled to 0..1): torchvision's pretrained backbones expect them.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


_EXACT_COUNT = 1 << 23  # pixels per cv2.calcHist call: its float32 bins count exactly up to 2**24


def class_counts(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes,) int64 pixels of each class id in a uint8 class map (ids past ``num_classes`` are
    not counted). ``cv2.calcHist`` is 4x faster than ``np.bincount`` on a 720p map and makes no int64
    copy of it (265 MB for an 8K mask); it runs on slices small enough for its float32 bins to be exact."""
    import cv2  # here, not at the top: the CLI (--help, checks) reads this module and must start without OpenCV

    if mask.dtype != np.uint8:
        raise TypeError(f"class_counts takes a uint8 class map, got {mask.dtype}")
    flat = np.ascontiguousarray(mask).reshape(1, -1)
    counts = np.zeros(256, np.int64)
    for start in range(0, flat.shape[1], _EXACT_COUNT):
        part = flat[:, start:start + _EXACT_COUNT]
        counts += cv2.calcHist([part], [0], None, [256], [0, 256]).reshape(-1).astype(np.int64)
    return counts[:num_classes]
