"""Joint image/mask augmentation with torchvision.transforms.v2 (geometry hits both, colour only the image).

Images are uint8 (3, H, W) tensors, masks (1, H, W) uint8; pixels that geometry moves in from
outside the frame are labelled IGNORE_INDEX so no loss is computed on them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from dronseg_edge.classes import IGNORE_INDEX
from dronseg_edge.option_fields import option

if TYPE_CHECKING:  # torch and torchvision are imported where used: `train --help` reads AugmentConfig without them
    import torch
    from torchvision.transforms import v2


@dataclass
class AugmentConfig:
    """Probabilities and magnitudes; ``enabled=False`` (or all zeros) gives the identity. The fields
    with help text are `train` options (option_fields.py)."""

    enabled: bool = option(True, "Augment the training images (the options below).", names=("--augment",))
    hflip: float = option(0.5, "Horizontal flip probability.")
    scale: float = option(0.25, "Random scale range +- (images scaled by 1 - scale .. 1 + scale).")
    shift: float = option(0.1, "Random shift, share of the width and height.")
    rotate: float = option(10.0, "Random rotation, degrees.")
    affine_p: float = 0.7
    brightness: float = option(0.25, "Brightness, contrast and saturation jitter.", names=("--color",),
                               also=("contrast", "saturation"))
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.02
    color_p: float = 0.8
    blur_p: float = option(0.1, "Gaussian blur probability.")
    noise_p: float = option(0.1, "Gaussian noise probability.")
    noise_std: float = 8.0  # in uint8 grey levels


def build_train_transform(cfg: AugmentConfig) -> v2.Transform | None:
    """The training pipeline, or None when augmentation is off."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    if not cfg.enabled:
        return None
    steps: list[v2.Transform] = []
    if cfg.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(p=cfg.hflip))
    if cfg.affine_p > 0 and (cfg.scale > 0 or cfg.shift > 0 or cfg.rotate > 0):
        affine = v2.RandomAffine(degrees=cfg.rotate, translate=(cfg.shift, cfg.shift),
                                 scale=(max(0.05, 1 - cfg.scale), 1 + cfg.scale),
                                 fill={tv_tensors.Image: 0, tv_tensors.Mask: IGNORE_INDEX})
        steps.append(v2.RandomApply([affine], p=cfg.affine_p))
    if cfg.color_p > 0:
        jitter = v2.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
        steps.append(v2.RandomApply([jitter], p=cfg.color_p))
    if cfg.blur_p > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel_size=5, sigma=(0.1, 1.5))], p=cfg.blur_p))
    return v2.Compose(steps)


def apply_train_transform(transform: v2.Transform | None, image: torch.Tensor, mask: torch.Tensor,
                          cfg: AugmentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment an (image (3,H,W) uint8, mask (H,W) uint8) pair; noise is added here (v2's noise is float-only)."""
    import torch
    from torchvision import tv_tensors

    if transform is None:
        return image, mask
    out_image, out_mask = transform(tv_tensors.Image(image), tv_tensors.Mask(mask.unsqueeze(0)))
    out_image, out_mask = out_image.as_subclass(torch.Tensor), out_mask.as_subclass(torch.Tensor)[0]
    if cfg.noise_p > 0 and torch.rand(()) < cfg.noise_p:
        noise = torch.randn(out_image.shape) * cfg.noise_std
        out_image = (out_image.float() + noise).clamp_(0, 255).to(torch.uint8)
    return out_image, out_mask
