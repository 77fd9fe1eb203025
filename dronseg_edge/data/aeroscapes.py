"""Reader for the Kaggle AeroScapes layout, with validation before any training starts.

Layout::

    ROOT/imgs/imgs/{ImageID}.jpg      RGB images
    ROOT/masks/masks/{ImageID}.png    single-channel class indices 0..11 (train images only)
    ROOT/train.csv, ROOT/test.csv     an ``ImageID`` column each

Without train.csv, images with a mask that test.csv does not list count as train; without test.csv, the others
as test.
"""

from __future__ import annotations

import csv
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dronseg_edge.classes import NUM_CLASSES, class_counts
from dronseg_edge.dataset_layout import FIX_LAYOUT, IMAGE_DIR, MASK_DIR, TEST_CSV, TRAIN_CSV
from dronseg_edge.errors import DronsegError
from dronseg_edge.media import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, check_max_pixels, checked_image_size, decode_bgr
from dronseg_edge.option_fields import one_of

# The data check decodes in threads: at most this many image pixels (each with its mask) at once,
# whatever the number of threads (about 6 bytes a pixel: BGR, the mask and Pillow's copy of it).
DECODE_BUDGET_PIXELS = 1 << 27


@dataclass(frozen=True)
class Sample:
    image_id: str
    image_path: Path
    mask_path: Path | None


@dataclass
class DatasetStats:
    """What validation learned: per-image pixel counts per class (N, C) int64 and image sizes (W, H)."""

    ids: list[str]
    counts: np.ndarray
    sizes: list[tuple[int, int]] = field(default_factory=list)

    @property
    def presence(self) -> np.ndarray:
        """(N, C) bool: which classes each image contains."""
        return self.counts > 0

    def counts_for(self, ids: list[str]) -> np.ndarray:
        """(C,) pixel counts over the given image IDs (e.g. the training split)."""
        index = {image_id: i for i, image_id in enumerate(self.ids)}
        return self.counts[[index[i] for i in ids]].sum(axis=0)


def read_ids(csv_path: Path) -> list[str]:
    """The ``ImageID`` column of a Kaggle CSV, in file order; a repeated ID is refused with its row."""
    try:
        # utf-8-sig: spreadsheet programs save UTF-8 with a byte-order mark, which would glue onto the header.
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "ImageID" not in reader.fieldnames:
                raise DronsegError(f"{csv_path} has no ImageID column (header: {reader.fieldnames}); {FIX_LAYOUT}")
            first_row: dict[str, int] = {}  # in file order
            for row in reader:
                image_id = (row.get("ImageID") or "").strip()
                if not image_id:
                    continue
                if image_id in first_row:
                    raise DronsegError(f"{csv_path} line {reader.line_num}: ImageID {image_id} is listed again "
                                       f"(first on line {first_row[image_id]}): remove the duplicate row")
                first_row[image_id] = reader.line_num
    except UnicodeDecodeError as exc:
        raise DronsegError(f"{csv_path} is not UTF-8 text (byte {exc.start}): save it as CSV UTF-8") from None
    except (OSError, csv.Error) as exc:
        raise DronsegError(f"cannot read {csv_path}: {exc}") from None
    return list(first_row)


def dataset_samples(root: Path | str, subset: str = "train") -> list[Sample]:
    """Samples of ``subset`` (train | test | all; images: all, masks where present) with paths checked; no pixel is
    decoded here."""
    root = Path(root)
    if not root.is_dir():
        raise DronsegError(f"data folder {root} does not exist; {FIX_LAYOUT} (make one with `dronseg-edge synth DIR`)")
    image_dir, mask_dir = root / IMAGE_DIR, root / MASK_DIR
    if not image_dir.is_dir():
        raise DronsegError(f"{image_dir} is missing; {FIX_LAYOUT}")
    for listing in (root / TRAIN_CSV, root / TEST_CSV):  # not read as no list at all (a folder, a broken link)
        if (listing.exists() or listing.is_symlink()) and not listing.is_file():
            raise DronsegError(f"{listing} is not a readable file: remove it or put the Kaggle CSV there")
    if (root / "synth.json").is_file() and not (root / TRAIN_CSV).is_file():  # synth writes its CSVs last
        raise DronsegError(f"{root} is a `synth` data set that was never finished (no train.csv): "
                           f"rerun `dronseg-edge synth {root} --force`")
    # Hidden files left out, as infer's image folders do: macOS writes a "._x.jpg" beside each x.jpg on some disks.
    images = _by_id(p for p in sorted(image_dir.iterdir())
                    if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    masks = _by_id(p for p in sorted(mask_dir.iterdir()) if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() == ".png") if mask_dir.is_dir() else {}  # X.PNG too, as images whatever their case
    extra = sorted(set(masks) - set(images))
    refuse_broken_links(image_dir, mask_dir)
    if extra:
        raise DronsegError(f"{masks[extra[0]]} has no image {image_dir / (extra[0] + '.jpg')} ({len(extra)} such masks): "
                           "remove the extra masks or add their images")
    train_csv, test_csv = root / TRAIN_CSV, root / TEST_CSV
    listed_test = read_ids(test_csv) if test_csv.is_file() else None
    not_test = set(images) - set(listed_test or ())  # an image test.csv lists is never trained on
    train_ids = read_ids(train_csv) if train_csv.is_file() else [i for i in images if i in masks and i in not_test]
    test_ids = listed_test if listed_test is not None else [i for i in images if i not in masks and i not in train_ids]
    both = [i for i in train_ids if i in set(listed_test or ())]  # Kaggle's two lists share no ID
    if both:
        raise DronsegError(f"ImageID {both[0]} is listed in both {train_csv} and {test_csv} ({len(both)} such IDs): a test "
                           "image would be trained on; remove it from one of them")
    wanted = {"train": train_ids, "test": test_ids, "all": train_ids + test_ids}  # disjoint (checked above)
    wanted["images"] = wanted["all"]  # calibration and parity images: their masks are optional
    one_of(subset, "subset", wanted)
    samples = []
    for image_id in wanted[subset]:
        if image_id not in images:
            raise DronsegError(f"image {image_dir / (image_id + '.jpg')} is listed in a CSV but missing: add it or remove its row")
        needs_mask = subset == "train" or (subset != "images" and image_id in train_ids)
        if needs_mask and image_id not in masks:
            raise DronsegError(f"mask {mask_dir / (image_id + '.png')} is missing for train image {images[image_id]}: add it or drop the image from train.csv")
        samples.append(Sample(image_id, images[image_id], masks.get(image_id)))
    if not samples and subset == "test" and listed_test == []:  # a header alone: the layout's advice did not name it
        raise DronsegError(f"{test_csv} lists no ImageID: add the test images' IDs, or remove it to take every image "
                           "without a mask")
    if not samples:
        raise DronsegError(f"{root} has no {'' if subset == 'images' else subset + ' '}images; {FIX_LAYOUT}")
    return samples


def _by_id(paths) -> dict[str, Path]:
    """``{ImageID: path}``; two files of one ID (X.jpg and X.png) are refused, not one of them picked."""
    found: dict[str, Path] = {}
    for path in paths:
        if path.stem in found:
            raise DronsegError(f"{found[path.stem]} and {path.name} are both {path.stem}: keep one of them")
        found[path.stem] = path
    return found


def samples_for_ids(root: Path | str, ids: list[str]) -> list[Sample]:
    """Samples with their masks for the given IDs, e.g. a saved validation split (an image without a mask
    would be scored as all-ignored: Dice 1.0 for every class)."""
    by_id = {s.image_id: s for s in dataset_samples(root, "all")}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DronsegError(f"{len(missing)} split IDs (first: {missing[0]}) are not in {Path(root) / IMAGE_DIR}: is it the same data set?")
    unlabelled = [i for i in ids if by_id[i].mask_path is None]
    if unlabelled:
        raise DronsegError(f"{len(unlabelled)} split images have no mask (first: {Path(root) / MASK_DIR / unlabelled[0]}.png): "
                           "is it the same data set?")
    return [by_id[i] for i in ids]


def read_bgr(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image as (H, W, 3) uint8 BGR, decoded only after its header showed at most ``max_pixels``
    pixels; DronsegError (one line naming the file) if it is larger or cannot be decoded."""
    checked_image_size(path, max_pixels)
    try:
        data = decode_bgr(path)
    except (cv2.error, OSError):  # OpenCV's own refusals: a header its decoder rejects
        data = None
    if data is None:
        raise DronsegError(f"image {path} cannot be read (missing, truncated or not an image): replace or remove it")
    return data


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An image as (H, W, 3) uint8 **RGB**; DronsegError if it cannot be decoded or is over ``max_pixels``."""
    return cv2.cvtColor(read_bgr(path, max_pixels), cv2.COLOR_BGR2RGB)


EXIF_ORIENTATION = 0x0112  # the EXIF tag that says how a picture is turned


def refuse_broken_links(*folders: Path) -> None:
    """One line naming an image link in ``folders`` whose target is gone: is_file() is False for it, so its image
    or mask seemed missing, or (a plain folder) it was left out without a word."""
    for p in (p for folder in folders if folder.is_dir() for p in sorted(folder.iterdir())):
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_symlink() and not p.exists():
            raise DronsegError(f"{p} is a link to a file that does not exist: restore its target or remove it")


def read_mask(path: Path, num_classes: int = NUM_CLASSES, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A mask as (H, W) uint8 class indices; DronsegError if unreadable, over ``max_pixels`` (read
    from its header before decoding), multi-channel or out of range."""
    checked_image_size(path, max_pixels, what="mask")
    try:
        with Image.open(path) as img:
            mode = img.mode
            if img.format in ("JPEG", "MPO"):  # refused undecoded: a JPEG of many scans takes minutes to decode
                raise DronsegError(f"mask {path} is a JPEG file, whose lossy coding changes class indices along every "
                                   "edge: save the masks as PNG")
            # Upright as its image: OpenCV turns images by their EXIF orientation tag, and Pillow does not
            data = np.array(ImageOps.exif_transpose(img) if img.getexif().get(EXIF_ORIENTATION, 1) != 1 else img)
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise DronsegError(f"mask {path} cannot be read ({exc.__class__.__name__}): replace it with a single-channel PNG") from None
    if data.ndim != 2:
        raise DronsegError(f"mask {path} has {data.shape[2] if data.ndim == 3 else data.ndim} channels (mode {mode}); masks "
                           f"must be single-channel PNGs of class indices 0..{num_classes - 1}, not colour visualisations")
    if data.dtype.kind not in "biu":  # a float TIFF named .png (mode F): NaN was a ValueError, 3.7 read as class 3
        raise DronsegError(f"mask {path} holds {data.dtype} values (mode {mode}); masks must be single-channel PNGs of "
                           f"class indices 0..{num_classes - 1}")
    if data.size and (int(data.max()) >= num_classes or int(data.min()) < 0):  # -2 of a 32-bit mask: 254 as uint8
        bad = np.unique(data[(data < 0) | (data >= num_classes)]).tolist()
        if 0 <= bad[0] and bad[-1] < NUM_CLASSES:  # the data set's classes, more than the model (num_classes) has
            raise DronsegError(f"mask {path} holds classes up to {bad[-1]} of the data set's {NUM_CLASSES}, but the "
                               f"model predicts {num_classes}: score a {NUM_CLASSES}-class model, or give masks of its "
                               "own classes")
        raise DronsegError(f"mask {path} holds values {bad[:5]} outside 0..{num_classes - 1}: fix the labels")
    return data.astype(np.uint8, copy=False)


def _check_headers(sample: Sample, max_pixels: int) -> int:
    """The pixels of the sample's image, its image and mask headers checked against ``max_pixels``."""
    width, height = checked_image_size(sample.image_path, max_pixels)
    if sample.mask_path is not None:
        checked_image_size(sample.mask_path, max_pixels, what="mask")
    return width * height


def _check_one(sample: Sample, num_classes: int, max_pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
    image = read_bgr(sample.image_path, max_pixels)
    size = (image.shape[1], image.shape[0])
    if sample.mask_path is None:
        return np.zeros(num_classes, np.int64), size
    mask = read_mask(sample.mask_path, num_classes, max_pixels)
    if mask.shape != image.shape[:2]:
        stored = checked_image_size(sample.image_path, max_pixels)
        turned = (f" (stored {stored[0]}x{stored[1]}, turned upright by its EXIF orientation tag as viewers show it: "
                  "save the mask upright too, or remove the tag)" if stored != size else "")
        raise DronsegError(f"mask {sample.mask_path} is {mask.shape[1]}x{mask.shape[0]} but image {sample.image_path} is "
                           f"{size[0]}x{size[1]}{turned}: masks must match their images pixel for pixel")
    return class_counts(mask, num_classes), size


def validate_samples(samples: list[Sample], num_classes: int = NUM_CLASSES, workers: int = 8,
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> DatasetStats:
    """Check every image and mask before any training starts: first their headers (at most ``max_pixels``
    pixels each: a decompression bomb is refused undecoded), then decode each once in threads to check it
    and count its classes. Only as many threads decode as DECODE_BUDGET_PIXELS holds of the largest image
    (at least one), whatever ``workers`` is. Raises the first DronsegError found, naming the file.
    """
    check_max_pixels(max_pixels)
    pixels = _map_all(max(1, workers), lambda s: _check_headers(s, max_pixels), samples)
    threads = max(1, min(workers, DECODE_BUDGET_PIXELS // max(pixels, default=1)))
    results = _map_all(threads, lambda s: _check_one(s, num_classes, max_pixels), samples)
    counts = np.stack([r[0] for r in results]) if results else np.zeros((0, num_classes), np.int64)
    return DatasetStats([s.image_id for s in samples], counts, [r[1] for r in results])


def _map_all(threads: int, fn, items: list) -> list:
    """``fn`` over ``items`` in ``threads`` threads, in order; the first error cancels what has not started."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        try:
            return list(pool.map(fn, items))
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
