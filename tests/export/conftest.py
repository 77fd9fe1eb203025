"""A small *trained* checkpoint and its data set, for parity checks that mean something.

Random weights give near-tied logits, so any rounding flips argmax pixels and fp16/int8 parity
says nothing (FACTS.md section 4). Here LR-ASPP gets a random MobileNetV3 backbone with BatchNorm
statistics measured on the data, and its segmentation head is trained on simple drone-like
scenes (sky, vegetation, road, cars, people) in the Kaggle layout: decisive logits in seconds on
two CPU cores (training the backbone too takes minutes). The project's synthetic scenes
(data/synthetic.py) are too detailed for a head-only model at 96x64 (in a trial: mIoU 6%, int8
agreement 88%), hence these flat ones. It is saved with the ``config``/``split`` keys a training
run writes, so the default data paths are exercised too.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.mobilenetv3 import InvertedResidual

from dronseg_edge.checkpoint import save_checkpoint
from dronseg_edge.classes import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD, PALETTE
from dronseg_edge.models import build_model

SIZE = (96, 64)  # (width, height)
ARCH = "lraspp_mobilenet_v3_large"
STEPS = 100
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


def _batch(root: Path, ids: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    images = [cv2.cvtColor(cv2.imread(str(root / "imgs/imgs" / f"{i}.jpg")), cv2.COLOR_BGR2RGB) for i in ids]
    masks = [cv2.imread(str(root / "masks/masks" / f"{i}.png"), cv2.IMREAD_GRAYSCALE) for i in ids]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255)
    return (x - mean) / std, torch.from_numpy(np.stack(masks)).long()


def train_checkpoint(path: Path, root: Path, train_ids: list[str], val_ids: list[str], steps: int = STEPS) -> Path:
    """Fit LR-ASPP's head for ``steps`` Adam steps on ``train_ids``; save it like a training run would."""
    torch.manual_seed(0)
    model = build_model(ARCH, weights="none")
    # Residual branches start at zero (the "zero-init residual" of ResNet training): a random
    # 16-block backbone otherwise amplifies any rounding like a chaotic system, which trained
    # networks do not (in a trial, int8 argmax agreement rose from 88.5% to 95.6% with it).
    for module in model.backbone.modules():
        if isinstance(module, InvertedResidual) and module.use_res_connect:
            torch.nn.init.zeros_(module.block[-1][1].weight)
    x, y = _batch(root, train_ids)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # running statistics = the plain average over the data
    with torch.no_grad():
        model.train()
        model.backbone(x)
        model.eval()
        features = model.backbone(x)
    optimizer = torch.optim.Adam(model.classifier.parameters(), lr=1e-2)
    model.classifier.train()
    for _ in range(steps):
        logits = F.interpolate(model.classifier(features), size=x.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.1
    return save_checkpoint(path, {
        "model": model.state_dict(), "arch": ARCH, "aux_loss": False, "class_names": list(CLASS_NAMES),
        "palette": [list(c) for c in PALETTE], "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD),
        "input_size": list(SIZE), "epoch": 1, "step": steps,
        "config": {"data": str(root), "size": list(SIZE)},
        "split": {"train": list(train_ids), "val": list(val_ids)},
    })


@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> Path:
    """A 40-scene data set root (Kaggle layout) at 96x64."""
    root = tmp_path_factory.mktemp("scenes")
    write_dataset(root, 40)
    return root


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, scenes) -> Path:
    """LR-ASPP (head trained) on the first 32 scenes; the last 8 are its validation split."""
    ids = sorted(p.stem for p in (scenes / "imgs/imgs").glob("*.jpg"))
    folder = tmp_path_factory.mktemp("run") / "weights"
    folder.mkdir()
    return train_checkpoint(folder / "best.pt", scenes, ids[:32], ids[32:])
