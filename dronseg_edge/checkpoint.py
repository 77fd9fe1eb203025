"""Checkpoints: one file that both resumes training and rebuilds the model; this module owns its schema.

A checkpoint is ``model_state(...)`` (what rebuilds the model: weights, architecture, classes,
palette, normalisation, training size), plus ``TrainingState(...).to_dict()`` when it is written by
a training run (what resumes it: optimiser, scheduler, scaler, progress, RNG, config, split).
Everything in it is plain data (tensors, numbers, strings, lists, dicts) so it loads with
``torch.load(..., weights_only=True)``: a checkpoint file is data, never code, on a torch whose
weights_only unpickler has no published bypass (torch_floor.py: ``torch_load`` refuses older ones).
"""

from __future__ import annotations

import math
import os
import reprlib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from dronseg_edge import __version__
from dronseg_edge.atomic import atomic_path
from dronseg_edge.classes import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD, PALETTE
from dronseg_edge.errors import DronsegError
from dronseg_edge.metadata import CHECKPOINT_FIX, ModelInfo
from dronseg_edge.models import ARCHS, build_model, head_channels, nonfinite_weight, odd_weight, output_stride_of
from dronseg_edge.torch_floor import torch_load

FORMAT = "dronseg-edge-checkpoint"
FORMAT_VERSION = 1


def model_state(model: nn.Module, arch: str, input_size: Sequence[int], *,
                class_names: Sequence[str] = CLASS_NAMES, palette: Sequence[Sequence[int]] = PALETTE,
                mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> dict[str, Any]:
    """The part of a checkpoint that rebuilds ``model`` (built by ``models.build_model(arch)``).

    ``input_size`` is the training size (W, H); ``mean``/``std`` the RGB normalisation in 0..1 units.
    Whether the aux head is stored, and the output stride, are read off the model, so they can never
    disagree with the weights.
    """
    return {
        "model": model.state_dict(),
        "arch": arch,
        "aux_loss": getattr(model, "aux_classifier", None) is not None,
        "output_stride": output_stride_of(model, arch),
        "class_names": list(class_names),
        "palette": [list(colour) for colour in palette],
        "mean": list(mean),
        "std": list(std),
        "input_size": list(input_size),
    }


@dataclass
class TrainingState:
    """The part of a checkpoint that resumes a run; ``epoch`` counts finished epochs, ``step`` optimiser steps.

    ``epoch_progress`` (mid-epoch saves only) is what of the next epoch is done: batches, optimiser
    steps, summed train loss and images. ``split`` maps ``train``/``val`` to image IDs.
    """

    optimizer: dict
    scheduler: dict
    scaler: dict
    epoch: int
    step: int
    best_metric: float
    best_metric_name: str
    metrics: dict
    rng: dict
    config: dict
    split: dict[str, list[str]]
    epoch_progress: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        # epoch_progress absent, not None: an end-of-epoch save has no partial epoch.
        state = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        return {**state, "split": {"train": list(self.split["train"]), "val": list(self.split["val"])}}

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> "TrainingState":
        """The training state of a loaded checkpoint, or a one-line DronsegError for a model-only file."""
        if "optimizer" not in ckpt or "config" not in ckpt:
            raise DronsegError(f"checkpoint {ckpt.get('path', '?')} holds no training state: resume from weights/last.pt of a run")
        try:
            return cls(
                optimizer=ckpt["optimizer"], scheduler=ckpt["scheduler"], scaler=ckpt.get("scaler") or {},
                epoch=int(ckpt["epoch"]), step=int(ckpt["step"]), best_metric=float(ckpt.get("best_metric", -math.inf)),
                best_metric_name=str(ckpt.get("best_metric_name", "")), metrics=dict(ckpt.get("metrics") or {}),
                rng=ckpt.get("rng") or {}, config=dict(ckpt["config"]),
                split={"train": recorded_split(ckpt, "train"), "val": recorded_split(ckpt, "val")},
                epoch_progress=ckpt.get("epoch_progress"),
            )
        except (KeyError, TypeError, ValueError) as exc:  # an edited file: no 'scheduler', epoch "abc"
            raise DronsegError(f"checkpoint {ckpt.get('path', '?')}: its training state cannot be read "
                               f"({type(exc).__name__}: {str(exc)[:100]}): {CHECKPOINT_FIX}") from None


def recorded_split(ckpt: dict[str, Any], part: str) -> list[str]:
    """Image IDs of the run's ``train`` or ``val`` part as the checkpoint records them ([] when it has none).

    The checkpoint, not the run folder's split.json (a human-readable copy), is where eval, export and
    resume read the split from: a checkpoint copied alone to another machine still knows it.
    """
    split = ckpt.get("split") or {}
    ids = (split.get(part) or []) if isinstance(split, dict) else None
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, str) for i in ids):  # an edited file's 5 or "abc"
        raise DronsegError(f"checkpoint {ckpt.get('path', '?')}: its split {reprlib.repr(split)} is not lists of image "
                           f"IDs: {CHECKPOINT_FIX}")
    return list(ids)


def recorded_data_root(ckpt: dict[str, Any], required: bool = False) -> Path | None:
    """The data set folder the checkpoint was trained on (``config["data"]``), or None when it records none;
    ``required``: a DronsegError naming --data when that folder is not here (not the data check's advice: synth)."""
    config = ckpt.get("config") or {}
    if not isinstance(config, dict) or not all(isinstance(config.get(key) or "", str) for key in ("data", "out")):
        raise DronsegError(f"checkpoint {ckpt.get('path', '?')}: its config {reprlib.repr(config)} records no data and "
                           f"out folders as text: {CHECKPOINT_FIX}")
    root, out = config.get("data"), Path(config.get("out") or "/")
    if root and not os.path.isabs(root) and not out.is_absolute() and ckpt.get("path"):
        # Versions before 2026-12-07 recorded --data and --out as typed, relative to where `train` ran: the run
        # folder less --out's parts, not the folder eval or export runs in (whose data/ may be another copy).
        run_dir = Path(ckpt["path"]).resolve().parts[:-2]
        if run_dir[len(run_dir) - len(out.parts):] == out.parts:
            root = str(Path(*run_dir[:len(run_dir) - len(out.parts)]) / root)
    if required and root and not Path(root).is_dir():
        raise DronsegError(f"the data folder {root} that {ckpt.get('path')} trained on does not exist here: "
                           "pass --data DIR (the same data set, the run's split names its images)")
    return Path(root) if root else None


def save_checkpoint(path: os.PathLike | str, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically (temporary file, then rename); adds the format tag and versions.

    A full or unwritable disk raises the one-line RuntimeFailure naming ``path`` (exit code 5), and
    the file that was there before stays as it was.
    """
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
               "torch_version": str(torch.__version__), **state}
    # An open file, not a path: torch's C++ writer drops errno, its Python one keeps the OSError (atomic.py).
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
    return Path(path)


def load_checkpoint(path: os.PathLike | str, num_classes: int | None = None) -> dict[str, Any]:
    """Load and validate a dronseg-edge checkpoint (on the CPU) or raise a one-line DronsegError."""
    path = Path(path)
    if path.suffix.lower() in (".onnx", ".engine", ".plan"):
        raise DronsegError(f"{path} is an exported model, not a training checkpoint: pass the .pt it was exported from")
    ckpt = torch_load(path, f"checkpoint {path}",
                      f"checkpoint {path} does not exist: pass the .pt written by `dronseg-edge train` (weights/best.pt)",
                      "; it is damaged or not a checkpoint written by `dronseg-edge train`: re-run training or pick another file")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DronsegError(f"{path} is not a dronseg-edge checkpoint (no '{FORMAT}' tag): pass a file written by `dronseg-edge train`")
    for key in ("model", "arch", "class_names", "input_size"):
        if key not in ckpt:
            raise DronsegError(f"checkpoint {path} lacks '{key}': it is damaged; use weights/last.pt or retrain")
    if not isinstance(ckpt["arch"], str) or ckpt["arch"] not in ARCHS:  # a list is unhashable, a deep one unprintable
        raise DronsegError(f"checkpoint {path} is for model {reprlib.repr(ckpt['arch'])}, which this version does not know")
    ckpt["path"] = str(path)
    ModelInfo.from_checkpoint(ckpt, with_hash=False)  # every metadata field checked: one line naming the field
    _check_head(ckpt)
    if num_classes is not None and len(ckpt["class_names"]) != num_classes:
        raise DronsegError(
            f"checkpoint {path} predicts {len(ckpt['class_names'])} classes, but {num_classes} are needed "
            f"({', '.join(CLASS_NAMES)}): retrain it with this version"
        )
    return ckpt


def _check_head(ckpt: dict[str, Any]) -> None:
    """The classifier's output channels must be the class names' count: 3 names on a 12-class model
    would run with class indices past the palette (black colours, stats of zero); every weight finite."""
    channels = head_channels(ckpt["model"], ckpt["arch"]) if isinstance(ckpt["model"], dict) else None
    if channels is None:
        raise DronsegError(f"checkpoint {ckpt['path']} holds no classifier weights for {ckpt['arch']}: it is damaged; "
                           "use weights/last.pt or retrain")
    if channels != len(ckpt["class_names"]):
        raise DronsegError(f"checkpoint {ckpt['path']}: metadata class_names has {len(ckpt['class_names'])} names but the "
                           f"model's classifier has {channels} output channels: {CHECKPOINT_FIX}")
    odd = odd_weight(ckpt["model"])
    if odd is not None:
        raise DronsegError(f"checkpoint {ckpt['path']}: {odd}: {CHECKPOINT_FIX}")
    # A run whose loss went NaN (too high a --lr) saves weights that make every pixel class 0.
    bad = nonfinite_weight(ckpt["model"])
    if bad is not None:
        raise DronsegError(f"checkpoint {ckpt['path']}: weight {bad} holds NaN or Inf (the training diverged): "
                           "retrain with a lower --lr, or use a checkpoint saved before its loss went NaN")


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the model of a loaded checkpoint with its weights, in eval mode, on the CPU."""
    model = build_model(ckpt["arch"], num_classes=len(ckpt["class_names"]), weights="none",
                        aux_loss=bool(ckpt.get("aux_loss", False)), output_stride=ckpt.get("output_stride"))
    state = ckpt["model"]
    if ckpt.get("aux_loss") is False or getattr(model, "aux_classifier", None) is None:
        state = {k: v for k, v in state.items() if not k.startswith("aux_classifier.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise DronsegError(f"checkpoint {ckpt.get('path', '?')} does not fit model {ckpt['arch']}: {first}") from None
    return model.eval()
