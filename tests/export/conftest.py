"""A small *trained* checkpoint and its data set, for parity checks that mean something.

Random weights give near-tied logits, so any rounding flips argmax pixels and fp16/int8 parity
says nothing (FACTS.md section 4). Here LR-ASPP is trained by the package's own loop for a few
seconds on simple drone-like scenes (sky, vegetation, road, bare ground, cars, people) in the
Kaggle layout: flat enough for a 96x64 model to learn them well, so its logits are decisive. The
run folder holds the ``config``/``split`` a training run writes, so the default data paths of
export (validation split for parity and calibration) are exercised too.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest

from dronseg_edge.data.augment import AugmentConfig
from dronseg_edge.train.config import TrainConfig
from dronseg_edge.train.fit import fit

SIZE = (96, 64)  # (width, height)
ARCH = "lraspp_mobilenet_v3_large"
EPOCHS = 10
# class -> base RGB colour of its surfaces
COLOURS = {0: (120, 100, 80), 1: (230, 190, 160), 3: (200, 30, 30), 9: (40, 140, 40), 10: (90, 90, 95), 11: (110, 170, 235)}


def render_scene(rng: np.random.Generator, size=SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One (RGB image (H, W, 3) uint8, class mask (H, W) uint8) pair: sky, ground, road, cars, people."""
    width, height = size
    mask = np.zeros((height, width), np.uint8)
    horizon = int(rng.integers(height // 6, height // 3))
    mask[:horizon] = 11
    mask[horizon:] = 9
    road_x = int(rng.integers(0, width - 30))
    road_w = int(rng.integers(18, 30))
    mask[horizon:, road_x:road_x + road_w] = 10
    mask[horizon + int(rng.integers(4, 12)):, :int(rng.integers(5, 20))] = 0  # bare ground patch
    for _ in range(int(rng.integers(1, 3))):
        y = int(rng.integers(horizon + 2, height - 10))
        x = int(rng.integers(road_x, max(road_x + 1, road_x + road_w - 10)))
        mask[y:y + 8, x:x + 10] = 3
    for _ in range(int(rng.integers(1, 3))):
        y = int(rng.integers(horizon + 2, height - 8))
        x = int(rng.integers(0, width - 4))
        mask[y:y + 7, x:x + 3] = 1
    image = np.zeros((height, width, 3), np.float32)
    for cls, colour in COLOURS.items():
        image[mask == cls] = colour
    image += rng.normal(0, 12, image.shape)
    image = cv2.GaussianBlur(image, (3, 3), 0)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_dataset(root: Path, count: int, seed: int = 0, size=SIZE) -> list[str]:
    """``count`` scenes in the Kaggle layout (imgs/imgs/*.jpg, masks/masks/*.png, train.csv); returns their IDs."""
    rng = np.random.default_rng(seed)
    (root / "imgs/imgs").mkdir(parents=True, exist_ok=True)
    (root / "masks/masks").mkdir(parents=True, exist_ok=True)
    ids = []
    for index in range(count):
        image, mask = render_scene(rng, size)
        image_id = f"scene_{index:03d}"
        cv2.imwrite(str(root / "imgs/imgs" / f"{image_id}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                    [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(root / "masks/masks" / f"{image_id}.png"), mask)
        ids.append(image_id)
    with open(root / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageID"])
        writer.writerows([i] for i in ids)
    return ids


def train_checkpoint(out: Path, root: Path, epochs: int = EPOCHS) -> Path:
    """Train LR-ASPP with the package's own loop (dronseg_edge.train.fit) on ``root``; return weights/best.pt.

    The whole network is trained (not only the head): a random backbone amplifies rounding far more
    than a trained one, which made int8 parity meaningless (about 97 % agreement with a trained head
    on a random backbone, 99.6 % when everything is trained).
    """
    cfg = TrainConfig(data=str(root), out=str(out), model=ARCH, weights="none", size=SIZE, epochs=epochs, batch=4,
                      lr=0.005, optimizer="adamw", bn_momentum=0.1, device="cpu", workers=0, seed=0,
                      tensorboard=False, plots=False, augment=AugmentConfig(enabled=False))
    return fit(cfg, log=lambda _m: None).best


@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> Path:
    """A 40-scene data set root (Kaggle layout) at 96x64."""
    root = tmp_path_factory.mktemp("scenes")
    write_dataset(root, 40)
    return root


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, scenes) -> Path:
    """LR-ASPP trained for a few seconds on the scenes (stratified 80/20 split; validation = 8 scenes)."""
    return train_checkpoint(tmp_path_factory.mktemp("run") / "run", scenes)
