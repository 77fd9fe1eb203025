"""The 12 AeroScapes classes, their colours and the input normalisation."""

from __future__ import annotations

CLASS_NAMES: tuple[str, ...] = (
    "background",
    "person",
    "bike",
    "car",
    "drone",
    "boat",
    "animal",
    "obstacle",
    "construction",
    "vegetation",
    "road",
    "sky",
)
NUM_CLASSES = len(CLASS_NAMES)

# Label value written where a pixel has no ground truth (augmentation borders); losses and metrics skip it.
IGNORE_INDEX = 255

# The AeroScapes colour map (RGB), so overlays look like the data set's own visualisations.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (192, 128, 128),
    (0, 128, 0),
    (128, 128, 128),
    (128, 0, 0),
    (0, 0, 128),
    (192, 0, 128),
    (192, 0, 0),
    (192, 128, 0),
    (0, 64, 0),
    (128, 128, 0),
    (0, 128, 128),
)

# ImageNet statistics (RGB, for images scaled to 0..1): torchvision's pretrained backbones expect them.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
