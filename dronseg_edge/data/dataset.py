"""torch Dataset over validated samples: uint8 tensors out, normalisation happens on the device."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from dronseg_edge.data.aeroscapes import Sample, read_image, read_mask
from dronseg_edge.data.augment import AugmentConfig, apply_train_transform, build_train_transform
from dronseg_edge.media import DEFAULT_MAX_PIXELS
from dronseg_edge.pictures import resize_frame


class SegmentationDataset(Dataset):
    """Items are ``(image uint8 (3, H, W) RGB, mask uint8 (H, W))`` at ``size`` (W, H).

    ``native_masks`` keeps masks at their file's resolution (evaluation at full size); samples without
    a mask give an all-IGNORE mask. An item may be an ``(index, seed)`` pair (AugmentSeedSampler): the
    augmentation then draws from a torch RNG seeded with ``seed``, whichever worker loads it.
    Images and masks over ``max_pixels`` (read from their headers) are refused, never decoded.
    """

    def __init__(self, samples: list[Sample], size: tuple[int, int] | None, augment: AugmentConfig | None = None,
                 num_classes: int = 12, native_masks: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.samples, self.size, self.augment = samples, tuple(size) if size else None, augment
        self.transform = build_train_transform(augment) if augment is not None else None
        self.num_classes, self.native_masks, self.max_pixels = num_classes, native_masks, max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item if isinstance(item, tuple) else (item, None)
        sample = self.samples[index]
        image = read_image(sample.image_path, self.max_pixels)
        mask = (np.full(image.shape[:2], 255, np.uint8) if sample.mask_path is None
                else read_mask(sample.mask_path, self.num_classes, self.max_pixels))
        if self.size is not None and (image.shape[1], image.shape[0]) != self.size:
            # The image as inference resizes frames, the mask by nearest unless kept at its own size:
            # INTER_NEAREST_EXACT takes the pixel at the centre of each block, where INTER_AREA centres the
            # image's (INTER_NEAREST takes its top-left one: labels shifted by (scale - 1) / 2 pixels).
            image = resize_frame(image, *self.size)
            if not self.native_masks:
                mask = cv2.resize(mask, self.size, interpolation=cv2.INTER_NEAREST_EXACT)
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        mask_t = torch.from_numpy(np.ascontiguousarray(mask))
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            return apply_train_transform(self.transform, image_t, mask_t, self.augment)


class AugmentSeedSampler(Sampler):
    """Wraps a sampler and yields ``(index, seed)`` with the seed a function of (seed, epoch, index).

    DataLoader workers carry their RNG from batch to batch, so without this a run resumed at epoch k
    would augment differently from one that never stopped. ``set_epoch`` reaches the wrapped sampler too.
    """

    def __init__(self, sampler: Sampler, seed: int):
        self.sampler, self.seed, self.epoch, self.skip = sampler, int(seed), 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Start epoch ``epoch``, leaving out its first ``skip`` samples (a run resumed mid-epoch)."""
        self.epoch, self.skip = int(epoch), int(skip)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return max(len(self.sampler) - self.skip, 0)

    def __iter__(self):
        base = (self.seed * 1_000_003 + self.epoch) * 10_000_019
        for index in itertools.islice(self.sampler, self.skip, None):
            yield int(index), (base + int(index)) % 2**63
