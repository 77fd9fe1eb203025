"""Joint augmentation: geometry moves image and mask together, colour only the image."""

import torch

from dronseg_edge.classes import IGNORE_INDEX
from dronseg_edge.data.augment import AugmentConfig, apply_train_transform, build_train_transform

OFF = dict(hflip=0.0, affine_p=0.0, color_p=0.0, blur_p=0.0, noise_p=0.0)


def pair():
    image = torch.zeros(3, 32, 48, dtype=torch.uint8)
    image[:, :, :24] = 200  # left half bright
    mask = torch.zeros(32, 48, dtype=torch.uint8)
    mask[:, :24] = 9  # left half vegetation
    return image, mask


def test_disabled_is_identity():
    cfg = AugmentConfig(enabled=False)
    image, mask = pair()
    out_image, out_mask = apply_train_transform(build_train_transform(cfg), image, mask, cfg)
    assert torch.equal(out_image, image) and torch.equal(out_mask, mask)


def test_flip_moves_both():
    cfg = AugmentConfig(**{**OFF, "hflip": 1.0})
    image, mask = pair()
    out_image, out_mask = apply_train_transform(build_train_transform(cfg), image, mask, cfg)
    assert torch.equal(out_mask, mask.flip(-1))
    assert torch.equal(out_image, image.flip(-1))
    assert out_mask.dtype == torch.uint8 and out_image.dtype == torch.uint8


def test_affine_keeps_alignment_and_fills_ignore():
    torch.manual_seed(0)
    cfg = AugmentConfig(**{**OFF, "affine_p": 1.0, "rotate": 30.0, "scale": 0.3, "shift": 0.2})
    transform = build_train_transform(cfg)
    image, mask = pair()
    out_image, out_mask = apply_train_transform(transform, image, mask, cfg)
    assert (out_mask == IGNORE_INDEX).any()  # borders brought in from outside
    # Where the mask says vegetation the image must be bright, and vice versa (nearest vs bilinear: allow edges).
    veg, bg = out_mask == 9, out_mask == 0
    assert out_image[0][veg].float().mean() > 150 and out_image[0][bg].float().mean() < 50


def test_colour_changes_image_not_mask():
    torch.manual_seed(1)
    cfg = AugmentConfig(**{**OFF, "color_p": 1.0, "brightness": 0.5, "contrast": 0.5, "noise_p": 1.0})
    image, mask = pair()
    out_image, out_mask = apply_train_transform(build_train_transform(cfg), image, mask, cfg)
    assert torch.equal(out_mask, mask)
    assert not torch.equal(out_image, image)
