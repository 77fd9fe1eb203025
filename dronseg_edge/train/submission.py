"""``dronseg-edge submit``: the Kaggle CSV (docs/facts.md#kaggle-format) for the test images of a data set."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dronseg_edge.checkpoint import load_checkpoint
from dronseg_edge.classes import CLASS_NAMES
from dronseg_edge.data.aeroscapes import dataset_samples
from dronseg_edge.data.rle import submission_rows, write_submission
from dronseg_edge.errors import DronsegError
from dronseg_edge.media import DEFAULT_MAX_PIXELS, check_max_pixels
from dronseg_edge.train.evaluation import checkpoint_model, native_loader


def write_competition_csv(checkpoint: Path, data: Path, out: Path, order: str = "row", batch: int = 4,
                          device: str = "auto", workers: int = 2, max_pixels: int | None = None) -> int:
    """Predict every test image at its native size and write ``out``; returns the number of rows.
    ``max_pixels``: the image size limit (None: the default, 2^26)."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else check_max_pixels(max_pixels)
    if order not in ("row", "column"):
        raise DronsegError(f"--rle-order {order!r}: choose row (C order, the likely Kaggle convention) or column")
    ckpt = load_checkpoint(checkpoint, num_classes=len(CLASS_NAMES))
    samples = dataset_samples(data, "test")
    for sample in samples:  # the CSV is UTF-8 text; a name in another encoding (a Windows zip's) has no ImageID there
        if sample.image_id != sample.image_id.encode("utf-8", "replace").decode("utf-8"):
            raise DronsegError(f"image {sample.image_path} has a name that is not UTF-8 and cannot be a submission's "
                               "ImageID: rename it")
    # Masks are not read for test images: the dataset yields an IGNORE mask of the native size, which gives the shape.
    samples = [type(s)(s.image_id, s.image_path, None) for s in samples]
    model, ctx = checkpoint_model(ckpt, device)
    loader = native_loader(ckpt, samples, batch, workers, limit)
    rows: list[tuple[str, str]] = []
    ids = iter(s.image_id for s in samples)
    with torch.no_grad():
        for images_u8, masks_u8 in tqdm(loader, desc="submit", leave=False, mininterval=1.0):
            with ctx.autocast():
                logits = model(ctx.images(images_u8))["out"]
            logits = F.interpolate(logits.float(), size=masks_u8.shape[-2:], mode="bilinear", align_corners=False)
            for class_map in logits.argmax(dim=1).to(torch.uint8).cpu().numpy():
                rows += submission_rows(next(ids), class_map, num_classes=len(ckpt["class_names"]), order=order)
    write_submission(rows, out)
    return len(rows)
