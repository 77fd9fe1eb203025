"""Validation mosaics: which images and epochs, the picture's layout and colours, and the files a run writes."""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

from dronseg_edge.classes import PALETTE
from dronseg_edge.data.augment import AugmentConfig
from dronseg_edge.train.config import TrainConfig
from dronseg_edge.train.fit import fit
from dronseg_edge.train.loop import StepContext
from dronseg_edge.train.mosaics import MIN_TILE, ValidationMosaic
from testkit import TINY_ARCH, TINY_SIZE

W, H = 96, 64


def test_the_same_images_spread_over_the_split(tmp_path):
    assert [ValidationMosaic(range(n), tmp_path, 1).indices for n in (10, 2, 1, 0)] == [[0, 3, 6, 9], [0, 1], [0], []]


def test_every_nth_epoch_and_the_last(tmp_path):
    mosaic = ValidationMosaic([None] * 6, tmp_path, every=5)
    assert [e for e in range(1, 13) if mosaic.due(e, last_epoch=12)] == [5, 10, 12]
    assert not any(ValidationMosaic([None] * 6, tmp_path, every=0).due(e, 12) for e in range(1, 13))
    assert not ValidationMosaic([], tmp_path, every=1).due(1, 1)  # no validation images: nothing to show


class AlwaysSky(nn.Module):
    """Predicts sky (11) everywhere; records the mode it ran in."""

    def forward(self, x):
        self.ran_in_training_mode = self.training
        logits = torch.zeros(x.shape[0], 12, *x.shape[-2:])
        logits[:, 11] = 1.0
        return {"out": logits}


def test_mosaic_rows_are_image_truth_prediction_in_palette_colours(tmp_path):
    masks = []
    for i in range(3):
        mask = np.full((H, W), 11, np.uint8)
        mask[H // 2:] = 10  # road below: the prediction (all sky) is half right
        mask[0, 0] = 255  # an unlabelled pixel: black, and not scored
        masks.append(mask)
    items = [(torch.full((3, H, W), 60 * (i + 1), dtype=torch.uint8), torch.from_numpy(m)) for i, m in enumerate(masks)]
    ctx = StepContext(torch.device("cpu"), None)
    model = AlwaysSky().train()
    path = ValidationMosaic(items, tmp_path / "mosaics", every=1).write(model, ctx, epoch=3)
    assert path == tmp_path / "mosaics" / "epoch_003.png" and not model.ran_in_training_mode
    picture = cv2.imread(str(path))
    tile_h = round(H * MIN_TILE / W)  # tiny images are enlarged to the minimum tile width
    assert picture.shape[1] == 3 * MIN_TILE and picture.shape[0] > 22 + 3 * (22 + tile_h)
    bgr = lambda cls: list(PALETTE[cls][::-1])  # noqa: E731
    top = 22 + 22  # title strip, then the first row's captions
    assert picture[top + 10, 10].tolist() == [60, 60, 60]  # the image (grey: channel order does not matter here)
    assert picture[top + 10, MIN_TILE + 10].tolist() == bgr(11)  # truth: sky on top
    assert picture[top + tile_h - 10, MIN_TILE + 10].tolist() == bgr(10)  # truth: road below
    assert picture[top, MIN_TILE].tolist() == [0, 0, 0]  # the unlabelled pixel
    assert picture[top + tile_h - 10, 2 * MIN_TILE + 10].tolist() == bgr(11)  # prediction: sky everywhere
    row2 = top + tile_h + 22
    assert picture[row2 + 10, 10].tolist() == [120, 120, 120]  # the second image in the second row


def test_a_run_writes_its_mosaics_beside_the_curves(synth_root, tmp_path):
    """Two epochs with --mosaic-every 3: only the last epoch's mosaic (the every-N rule is tested above)."""
    cfg = TrainConfig(data=str(synth_root), out=str(tmp_path / "run"), model=TINY_ARCH, weights="none", size=TINY_SIZE,
                      epochs=2, batch=4, max_steps_per_epoch=1, device="cpu", workers=0, tensorboard=False, plots=False,
                      mosaic_every=3, val_every=2, augment=AugmentConfig(enabled=False))
    result = fit(cfg, log=lambda _m: None)
    assert sorted(p.name for p in (result.run_dir / "mosaics").iterdir()) == ["epoch_002.png"]
    picture = cv2.imread(str(result.run_dir / "mosaics" / "epoch_002.png"))
    assert picture is not None and picture.shape[1] == 3 * MIN_TILE
