"""``dronseg-edge eval``: score a checkpoint on a split or a whole folder, at the masks' own resolution."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from dronseg_edge.checkpoint import load_checkpoint, model_from_checkpoint, recorded_data_root, recorded_split
from dronseg_edge.classes import CLASS_NAMES, IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD
from dronseg_edge.data.aeroscapes import Sample, dataset_samples, samples_for_ids, validate_samples
from dronseg_edge.data.dataset import SegmentationDataset
from dronseg_edge.devices import resolve_device
from dronseg_edge.errors import DronsegError
from dronseg_edge.media import DEFAULT_MAX_PIXELS, check_max_pixels
from dronseg_edge.train.loop import StepContext, evaluate
from dronseg_edge.train.rng import worker_init
from dronseg_edge.metrics import SegmentationMetrics


def split_samples(ckpt: dict, root: Path, split: str) -> list[Sample]:
    """Samples of the run's ``val``/``train`` split (as the checkpoint records it), or ``all`` labelled images of ``root``."""
    if split == "all":
        return dataset_samples(root, "train")
    if split not in ("val", "train"):
        raise DronsegError(f"--split {split!r}: choose val, train or all")
    ids = recorded_split(ckpt, split)
    if not ids:
        raise DronsegError(f"checkpoint {ckpt.get('path')} holds no {split} split: use --split all")
    return samples_for_ids(root, ids)


def native_loader(ckpt: dict, samples: list[Sample], batch: int, workers: int,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> DataLoader:
    """Images at the checkpoint's size, masks at their native size (batch 1 when native sizes differ);
    images and masks over ``max_pixels`` are refused before decoding."""
    sizes = set(validate_samples(samples, num_classes=len(ckpt["class_names"]), max_pixels=max_pixels).sizes)
    dataset = SegmentationDataset(samples, tuple(ckpt["input_size"]), augment=None,
                                  num_classes=len(ckpt["class_names"]), native_masks=True, max_pixels=max_pixels)
    return DataLoader(dataset, batch_size=batch if len(sizes) == 1 else 1, shuffle=False, num_workers=workers,
                      worker_init_fn=worker_init)


def checkpoint_model(ckpt: dict, device: str) -> tuple[torch.nn.Module, StepContext]:
    """The checkpoint's model on ``device`` (channels_last and bf16 autocast where CUDA has them), and its StepContext."""
    torch_device = resolve_device(device)
    cuda = torch_device.type == "cuda"
    amp = torch.bfloat16 if cuda and torch.cuda.is_bf16_supported() else None
    ctx = StepContext(torch_device, amp, ckpt.get("mean", IMAGENET_MEAN), ckpt.get("std", IMAGENET_STD), cuda)
    return model_from_checkpoint(ckpt).to(torch_device, memory_format=torch.channels_last if cuda else torch.contiguous_format), ctx


def evaluate_checkpoint(checkpoint: Path, data: Path | None = None, split: str = "val", batch: int = 4,
                        device: str = "auto", workers: int = 2, max_pixels: int | None = None) -> dict[str, Any]:
    """Scores of ``checkpoint`` on ``split``: the metrics dict of SegmentationMetrics plus provenance.
    ``max_pixels``: the image size limit (None: the default, 2^26)."""
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else check_max_pixels(max_pixels)
    ckpt = load_checkpoint(checkpoint, num_classes=len(CLASS_NAMES))
    root = Path(data) if data is not None else recorded_data_root(ckpt, required=True)
    if root is None:
        raise DronsegError(f"checkpoint {ckpt.get('path')} does not record its data set: pass --data DIR")
    samples = split_samples(ckpt, root, split)
    model, ctx = checkpoint_model(ckpt, device)
    metrics = SegmentationMetrics(len(ckpt["class_names"]), IGNORE_INDEX)
    scores = evaluate(model, None, native_loader(ckpt, samples, batch, workers, limit), ctx, metrics, description=f"eval {split}")
    scores.pop("loss", None)
    # The keys of an .onnx/.engine's scores (export/accuracy.evaluate_artifact): one schema for eval --json.
    path, precision = os.path.abspath(checkpoint), "bf16" if ctx.amp_dtype is not None else "fp32"
    return {"model": path, "data": os.path.abspath(root),  # read from anywhere, as parity reports
            "split": split, "split_source": "every labelled image" if split == "all" else f"{split} split recorded in {path}",
            "arch": ckpt["arch"], "input_size": list(ckpt["input_size"]), "precision": precision, "io": "tensors",
            "backend": "torch", "provider": f"{ctx.device.type} {precision}" + " channels_last" * ctx.channels_last,
            "class_names": list(ckpt["class_names"]), **scores}


def format_scores(result: dict[str, Any]) -> str:
    """A per-class table plus the summary scores."""
    lines = [f"{'class':<14}{'IoU':>8}{'Dice':>8}"]
    lines += [f"{name:<14}{_fmt(iou):>8}{_fmt(dice):>8}" for name, iou, dice in zip(result["class_names"], result["iou"], result["dice"])]
    lines.append(f"{result['split']} split, {result['images']} images of {result['data']}: mIoU {result['miou']:.4f}  "
                 f"mDice {result['mdice']:.4f}  competition {result['competition']:.4f}  pixel acc {result['pixel_acc']:.4f}")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.4f}"
