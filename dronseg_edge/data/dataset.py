"""torch Dataset over validated samples: uint8 tensors out, normalisation happens on the device."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from dronseg_edge.data.aeroscapes import Sample, read_image, read_mask
from dronseg_edge.data.augment import AugmentConfig, apply_train_transform, build_train_transform


def resize_pair(image: np.ndarray, mask: np.ndarray | None, size: tuple[int, int] | None):
    """Resize an RGB image (area/linear) and its mask (nearest) to ``size`` = (W, H); None keeps them."""
    if size is None or (image.shape[1], image.shape[0]) == tuple(size):
        return image, mask
    shrink = size[0] < image.shape[1]
    image = cv2.resize(image, tuple(size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if mask is not None:
        mask = cv2.resize(mask, tuple(size), interpolation=cv2.INTER_NEAREST)
    return image, mask


class SegmentationDataset(Dataset):
    """Items are ``(image uint8 (3, H, W) RGB, mask uint8 (H, W))`` at ``size`` (W, H).

    ``mask_size='native'`` keeps masks at their file's resolution (evaluation at full size);
    samples without a mask return an all-IGNORE mask of the image size.
    """

    def __init__(self, samples: list[Sample], size: tuple[int, int] | None, augment: AugmentConfig | None = None,
                 num_classes: int = 12, native_masks: bool = False):
        self.samples = samples
        self.size = tuple(size) if size else None
        self.augment = augment
        self.transform = build_train_transform(augment) if augment is not None else None
        self.num_classes = num_classes
        self.native_masks = native_masks

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[index]
        image = read_image(sample.image_path)
        if sample.mask_path is not None:
            mask = read_mask(sample.mask_path, self.num_classes)
        else:
            mask = np.full(image.shape[:2], 255, np.uint8)
        if self.native_masks:
            image, _ = resize_pair(image, None, self.size)
        else:
            image, mask = resize_pair(image, mask, self.size)
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        mask_t = torch.from_numpy(np.ascontiguousarray(mask))
        if self.transform is not None:
            image_t, mask_t = apply_train_transform(self.transform, image_t, mask_t, self.augment)
        return image_t, mask_t
