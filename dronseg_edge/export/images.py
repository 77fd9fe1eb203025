"""Which real images parity checks and int8 calibration run on.

Order of preference: the folder the user names (a dataset root in the Kaggle layout, or a plain
folder of images), else the validation split recorded in the checkpoint (``config["data"]`` +
``split["val"]``). Parity falls back to freshly rendered synthetic scenes only when neither exists
and says so in its report; calibration never does (int8 ranges from fake images would be wrong).
"""

from __future__ import annotations

import contextlib
import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dronseg_edge.checkpoint import recorded_data_root, recorded_split
from dronseg_edge.data.aeroscapes import dataset_samples, read_bgr, read_mask, refuse_broken_links, samples_for_ids
from dronseg_edge.data.split import pick_evenly
from dronseg_edge.dataset_layout import IMAGE_DIR, TEST_MASK_DIR
from dronseg_edge.errors import DronsegError
from dronseg_edge.media import IMAGE_SUFFIXES, ImageTooLarge, checked_image_size, without_option



@dataclass(frozen=True)
class ImageItem:
    image: Path
    mask: Path | None = None


@dataclass(eq=False)
class ImageSet(contextlib.ExitStack):
    """Images (and ground-truth masks where known) plus a one-line description of where they came from;
    closing it removes what it rendered."""

    items: list[ImageItem]
    source: str
    synthetic: bool = False

    def __post_init__(self) -> None:
        super().__init__()


def images_from_folder(folder: Path, option: str) -> tuple[list[ImageItem], str]:
    """Items of a dataset root (Kaggle layout, masks where present) or of a plain image folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DronsegError(f"{option} {folder} {'is a file' if folder.exists() else 'does not exist'}: pass a folder of "
                           f"images or a dataset root (ROOT/{IMAGE_DIR})")
    if (folder / IMAGE_DIR).is_dir():
        samples = dataset_samples(folder, "images")
        test_masks = {p.stem: p for p in (folder / TEST_MASK_DIR).glob("*.png")}
        return [ImageItem(s.image_path, s.mask_path or test_masks.get(s.image_id)) for s in samples], f"data set {folder.resolve()}"
    refuse_broken_links(folder)  # else left out without a word
    # Hidden files left out, as infer's image folders do (macOS's "._x.jpg" beside each x.jpg is no image).
    images = sorted(p for p in folder.iterdir()
                    if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DronsegError(
            f"{option} {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): pass a folder of images "
            f"or a dataset root (ROOT/{IMAGE_DIR})"
        )
    return [ImageItem(p) for p in images], f"image folder {folder.resolve()}"  # resolved: recorded in artifacts


def check_folder(folder: Path, option: str, max_images: int | None, masks: bool = True) -> None:
    """Check the headers of the images (and ``masks``) of ``folder`` that ``max_images`` picks (readable, within
    the default pixel limit) before an export's work: a damaged one is one line naming it, not a failure after it."""
    try:
        for item in pick_evenly(images_from_folder(folder, option)[0], max_images):
            checked_image_size(item.image)
            if masks and item.mask is not None:
                checked_image_size(item.mask, what="mask")
    except ImageTooLarge as exc:
        raise without_option(exc) from None


def resolve_images(data: Path | None, ckpt: dict[str, Any] | None, *, option: str, max_images: int | None,
                   size: tuple[int, int], allow_synthetic: bool) -> ImageSet:
    """The image set for a parity check (``allow_synthetic``) or a calibration (not).

    ``data``: the user's folder or None; ``ckpt``: a loaded checkpoint (for its validation split) or
    None; ``size``: (W, H) of synthetic images if they are rendered; ``max_images``: the cap.
    """
    if data is not None:
        items, source = images_from_folder(Path(data), option)
        return ImageSet(pick_evenly(items, max_images), source)
    why = "no checkpoint among the models to take a validation split from"
    if ckpt is not None:
        root, val_ids = recorded_data_root(ckpt), recorded_split(ckpt, "val")
        if root is None or not val_ids:
            why = f"checkpoint {ckpt.get('path', '')} records no validation split"
        elif not root.is_dir():
            why = f"the data folder {root} that checkpoint {ckpt.get('path', '')} was trained on no longer exists"
        else:
            samples = samples_for_ids(root, val_ids)
            return ImageSet(pick_evenly([ImageItem(s.image_path, s.mask_path) for s in samples], max_images),
                            f"validation split of {root} ({len(samples)} images)")
    if not allow_synthetic:
        raise DronsegError(f"{option} is needed: {why}; pass {option} DIR with real images (a dataset root or an image folder)")
    return synthetic_images(max_images or 16, size, why)


def synthetic_images(count: int, size: tuple[int, int], why: str) -> ImageSet:
    """Render ``count`` synthetic scenes with masks into a temporary folder (deleted on close)."""
    if importlib.util.find_spec("dronseg_edge.data.synthetic") is None:
        raise DronsegError(f"no images to compare on: {why}; pass --parity-data DIR (a dataset root or an image folder)")
    from dronseg_edge.data.synthetic import synthesize

    images = ImageSet([], "", synthetic=True)
    root = Path(images.enter_context(tempfile.TemporaryDirectory(prefix="dronseg-parity-")))
    size = tuple(min(max(int(side), 32), 8192) for side in size)  # synth's range; parity resizes them to the model's
    synthesize(root, images=count, size=size, video_frames=0, seed=0, test_fraction=0.0)
    images.items = images_from_folder(root, "--parity-data")[0][:count]
    images.source = f"{len(images.items)} synthetic scenes ({why})"
    return images


def load_item(item: ImageItem, num_classes: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(BGR uint8 (H, W, 3), ground-truth class map (H, W) uint8 or None: no mask, or ``num_classes`` None) of one
    item, each header checked against the default pixel limit first (parity and calibration take no --max-pixels)."""
    try:
        return read_bgr(item.image), read_mask(item.mask, num_classes) if item.mask and num_classes else None
    except ImageTooLarge as exc:
        raise without_option(exc) from None
