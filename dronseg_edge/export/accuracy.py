"""Accuracy of any artifact against ground truth: ``dronseg-edge eval model.onnx|.engine`` and bench --matrix.

Scored as ``eval`` scores a checkpoint (train/evaluation.py, train/loop.evaluate), so the numbers of a
``.pt`` and of its exports are comparable: each image is shrunk to the artifact's input size the
way the runtime does it (``runtime/host.preprocess_host``: INTER_AREA, x / 255, mean/std; the same
pixels training's data loader gives), the artifact runs, and the prediction is brought back to the
mask's own (native) resolution before scoring: logits bilinearly, then argmax, as the checkpoint
evaluation does; a class map (``head=argmax``, or a frames artifact's mask) by nearest neighbour.
A frames artifact (``io=frames``) gets the uint8 frame itself (resized only to a static
``source_size``) and returns its class map. Metrics are metrics.SegmentationMetrics.

Which images (``split_samples_for``): ``--split all`` is every labelled image of the data set. For
``val``/``train``: the split recorded in the source checkpoint when there is one (the file itself
for a ``.pt``; the ``source_checkpoint`` an export records, when that file exists), read from
``--data`` or else from the data set the checkpoint records; without such a checkpoint, the split
training makes of ``--data`` by default (stratified, ``--val-fraction 0.2``, ``--seed 0``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dronseg_edge.checkpoint import load_checkpoint, recorded_data_root, recorded_split
from dronseg_edge.classes import IGNORE_INDEX
from dronseg_edge.data.aeroscapes import Sample, dataset_samples, read_bgr, read_mask, samples_for_ids, validate_samples
from dronseg_edge.errors import DronsegError
from dronseg_edge.media import DEFAULT_MAX_PIXELS, check_max_pixels
from dronseg_edge.metadata import ModelInfo
from dronseg_edge.metrics import SegmentationMetrics
from dronseg_edge.runtime.base import Backend, pad_batch
from dronseg_edge.runtime.host import class_map_host, frames_in_order, preprocess_host, resize_frame
from dronseg_edge.runtime.registry import is_checkpoint, load_backend

# The split `train` makes when given no --val-fraction/--seed (train/config.py TrainConfig; a test keeps them equal).
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_SEED = 0
SPLITS = ("val", "train", "all")


@dataclass
class EvalImages:
    """The images to score on: ``samples`` of the data set at ``root``; ``source`` says where the split came from."""

    samples: list[Sample]
    root: Path
    split: str
    source: str


def source_checkpoint(model: Path, info: ModelInfo) -> Path | None:
    """The training checkpoint ``model`` comes from, when it exists here: the file itself for a ``.pt``,
    else the ``source_checkpoint`` its metadata records."""
    if is_checkpoint(model):
        return Path(model)
    recorded = info.extra.get("source_checkpoint")
    return Path(recorded) if isinstance(recorded, str) and recorded and Path(recorded).is_file() else None


def split_samples_for(model: Path, info: ModelInfo, data: Path | None, split: str = "val",
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> EvalImages:
    """The images ``model`` is scored on (see the module docstring); DronsegError naming the fix when none can be found."""
    if split not in SPLITS:
        raise DronsegError(f"--split {split!r}: choose val, train or all")
    source = source_checkpoint(Path(model), info)
    ckpt = load_checkpoint(source) if source is not None else None
    root = Path(data) if data is not None else (recorded_data_root(ckpt, required=True) if ckpt is not None else None)
    if root is None:
        where = (f"its checkpoint {source} records no data set" if ckpt is not None else
                 "its metadata names no source checkpoint that exists here")
        raise DronsegError(f"{model}: no data set to score on ({where}): pass --data DIR (a data set in the Kaggle layout)")
    if split == "all":
        return EvalImages(dataset_samples(root, "train"), root, split, "every labelled image")
    ids = recorded_split(ckpt, split) if ckpt is not None else []
    if ids:
        return EvalImages(samples_for_ids(root, ids), root, split, f"{split} split recorded in {source}")
    return _default_split(root, info, split, source, max_pixels)


def _default_split(root: Path, info: ModelInfo, split: str, source: Path | None, max_pixels: int) -> EvalImages:
    """The split `train` would make of ``root`` with its defaults (stratified on class presence)."""
    from dronseg_edge.data.split import stratified_split

    samples = dataset_samples(root, "train")
    stats = validate_samples(samples, num_classes=info.num_classes, max_pixels=max_pixels)
    try:
        train_ids, val_ids = stratified_split(stats.ids, stats.presence, DEFAULT_VAL_FRACTION, DEFAULT_SEED)
    except ImportError:
        raise DronsegError(f"recomputing the {split} split of {root} needs iterative-stratification: "
                           "pip install 'dronseg-edge[train]', or score every image with --split all") from None
    by_id = {s.image_id: s for s in samples}
    why = f"(checkpoint {source} records none)" if source is not None else "(no source checkpoint found)"
    return EvalImages([by_id[i] for i in (val_ids if split == "val" else train_ids)], root, split,
                      f"{split} split recomputed as train makes it (stratified, val fraction {DEFAULT_VAL_FRACTION}, "
                      f"seed {DEFAULT_SEED}) {why}")


def score_backend(backend: Backend, samples: Sequence[Sample], batch: int = 4,
                  max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """SegmentationMetrics.compute() of ``backend`` on ``samples`` (masks at their native size).

    ``batch``: images per call for a dynamic artifact (a static one takes its own batch); the last
    call is padded so every call has one shape (CUDA graphs are captured once).
    """
    info = backend.info
    if not samples:
        raise DronsegError(f"no images to score {backend.path} on: check --data and --split")
    step = info.batch if (not info.dynamic and info.batch) else max(1, int(batch))
    metrics = SegmentationMetrics(info.num_classes, IGNORE_INDEX)
    for start in range(0, len(samples), step):
        chunk = samples[start:start + step]
        frames = [read_bgr(s.image_path, max_pixels) for s in chunk]
        masks = [read_mask(s.mask_path, info.num_classes, max_pixels) for s in chunk]
        for output, mask in zip(_infer(backend, frames, step), masks):
            metrics.update(class_map_at(output, mask.shape), torch.from_numpy(mask))
    return metrics.compute()


def _infer(backend: Backend, frames: list[np.ndarray], step: int) -> list[np.ndarray]:
    """Per frame: (C, h, w) float32 logits or an (h, w) class map, as numpy. A frames artifact gets the uint8
    frames in its colour order, as they are (or at its static source_size)."""
    info = backend.info
    if info.io == "tensors":
        groups = [preprocess_host(frames, info)]
    else:
        if info.source_size is not None and not info.dynamic:
            frames = [resize_frame(f, *info.source_size) for f in frames]
        frames = [frames_in_order(f, info) for f in frames]
        # A dynamic graph takes one frame size per call.
        groups = [np.stack(frames)] if len({f.shape for f in frames}) == 1 else [f[None] for f in frames]
    outputs = []
    for group in groups:
        batch, real = pad_batch(group, step if len(groups) == 1 else 1)
        outputs += list(np.asarray(backend.infer(batch))[:real])
    return outputs


def class_map_at(output: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """(H, W) int64 classes at the mask's size: logits upsampled bilinearly then argmax (as eval of a
    checkpoint does), a class map by nearest neighbour."""
    if output.ndim == 3:
        logits = torch.from_numpy(np.ascontiguousarray(output, np.float32)).unsqueeze(0)
        if tuple(logits.shape[-2:]) != tuple(shape):
            logits = F.interpolate(logits, size=tuple(shape), mode="bilinear", align_corners=False)
        return logits.argmax(dim=1)[0]
    return torch.from_numpy(class_map_host(output, shape[0], shape[1]).astype(np.int64))


def evaluate_artifact(model: Path, data: Path | None = None, split: str = "val", batch: int = 4, device="auto",
                      meta: Path | None = None, max_pixels: int | None = None) -> dict[str, Any]:
    """Scores of an ``.onnx``/``.engine`` (or ``.pt``) file on ``split``: the metrics dict of SegmentationMetrics
    plus provenance (model, data, split, split_source, arch, input_size, precision, backend, provider, class_names).

    ``meta``: metadata for a file without its own (``--meta``: the ONNX an engine was built from, or a sidecar JSON).
    ``max_pixels``: images and masks above it are refused before decoding (None: the default, 2^26).
    """
    backend = load_backend(model, device, meta=meta)
    limit = DEFAULT_MAX_PIXELS if max_pixels is None else check_max_pixels(max_pixels)
    # Activated before the data is read: a file whose metadata does not match its own graph (3 class names on a
    # 12-class model) is named as the culprit, not the masks its class count would call out of range.
    with backend:
        images = split_samples_for(Path(model), backend.info, data, split, limit)
        # The checks eval of a checkpoint makes (a mask the size of its image, classes in range), so both agree
        validate_samples(images.samples, num_classes=backend.info.num_classes, max_pixels=limit)
        scores = score_backend(backend, images.samples, batch, limit)
    info = backend.info
    return {"model": os.path.abspath(model), "data": os.path.abspath(images.root),  # read from anywhere, as parity reports
            "split": split, "split_source": images.source,
            "arch": info.arch, "input_size": list(info.input_size), "precision": info.precision, "io": info.io,
            "backend": backend.name, "provider": backend.provider, "class_names": list(info.class_names), **scores}
