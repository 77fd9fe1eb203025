"""Validation mosaics: image | truth | prediction for a fixed set of validation images, written as
``RUN/mosaics/epoch_NNN.png`` every ``--mosaic-every`` epochs and after the last, beside the curves.

The same images in every mosaic (spread evenly over the validation split), so a run's progress is seen
on them epoch after epoch; rows are captioned with the image ID and that image's pixel accuracy.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from dronseg_edge.classes import CLASS_NAMES, IGNORE_INDEX, PALETTE
from dronseg_edge.data.split import pick_evenly
from dronseg_edge.pictures import caption, colour_classes, fit_width, grid_row, legend, stack_rows, write_image
from dronseg_edge.train.loop import StepContext

MOSAIC_IMAGES = 4
MIN_TILE, MAX_TILE = 192, 384  # px width of one column: tiny training sizes are enlarged, large ones shrunk


class ValidationMosaic:
    """Writes the mosaics of one run (``dataset``: the validation set, items ``(uint8 (3, H, W) RGB, uint8 (H, W) mask)``)."""

    def __init__(self, dataset, folder: Path, every: int):
        self.dataset, self.folder, self.every = dataset, Path(folder), int(every)
        self.indices = pick_evenly(list(range(len(dataset))), MOSAIC_IMAGES)

    def due(self, epoch: int, last_epoch: int) -> bool:
        """Whether finished epoch ``epoch`` (1-based) gets a mosaic: every ``every``-th and the last."""
        return self.every > 0 and bool(self.indices) and (epoch % self.every == 0 or epoch == last_epoch)

    @torch.no_grad()
    def write(self, model: nn.Module, ctx: StepContext, epoch: int) -> Path:
        """Predict the fixed images with ``model`` (left in eval mode, as ``evaluate`` leaves it) and write the PNG:
        a row per image (image | truth | prediction), captions, and a legend of the classes shown."""
        images, masks = zip(*(self.dataset[i] for i in self.indices))
        images = torch.stack(images)
        model.eval()
        with ctx.autocast():
            logits = model(ctx.images(images))["out"]
        predictions = logits.float().argmax(dim=1).cpu().numpy()
        # Image IDs of the chosen items when the data set knows them (a Subset under DDP: its positions).
        samples = getattr(self.dataset, "samples", None)
        names = [f"#{i}" if samples is None else str(getattr(samples[i], "image_id", f"#{i}")) for i in self.indices]
        width = min(max(images.shape[3], MIN_TILE), MAX_TILE)
        rows, shown = [], set()
        for image, truth, predicted, name in zip(images.permute(0, 2, 3, 1).numpy(), masks, predictions, names):
            truth = truth.numpy()
            labelled = truth != IGNORE_INDEX  # unlabelled pixels: black, and not scored
            accuracy = float((predicted[labelled] == truth[labelled]).mean()) if labelled.any() else float("nan")
            tiles = [fit_width(np.ascontiguousarray(image[..., ::-1]), width),
                     fit_width(colour_classes(truth, PALETTE), width, nearest=True),
                     fit_width(colour_classes(predicted, PALETTE), width, nearest=True)]
            rows.append(grid_row(tiles, [name, "truth", f"prediction ({100 * accuracy:.1f}% pixels right)"]))
            shown.update(np.unique(truth[labelled]).tolist())
            shown.update(np.unique(predicted).tolist())
        total = 3 * width
        picture = stack_rows([caption(total, f"epoch {epoch}: image | truth | prediction"), *rows,
                              legend(CLASS_NAMES, PALETTE, total, present=sorted(shown))])
        return write_image(self.folder / f"epoch_{epoch:03d}.png", picture)
