"""Checkpoints: one file that both resumes training and rebuilds the model; this module owns its schema.

A checkpoint is ``model_state(...)`` (what rebuilds the model: weights, architecture, classes,
palette, normalisation, training size), plus ``TrainingState(...).to_dict()`` when it is written by
a training run (what resumes it: optimiser, scheduler, scaler, progress, RNG, config, split).
Everything in it is plain data (tensors, numbers, strings, lists, dicts) so it loads with
``torch.load(..., weights_only=True)``: a checkpoint file is data, never code, on a torch whose
weights_only unpickler has no published bypass (torch_floor.SAFE_TORCH; ``torch_load`` refuses older ones).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from dronseg_edge import __version__
from dronseg_edge.atomic import atomic_path
from dronseg_edge.classes import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD, PALETTE
from dronseg_edge.errors import DronsegError
from dronseg_edge.metadata import CHECKPOINT_FIX, ModelInfo, sha256_file
from dronseg_edge.storage import storage_faults
from dronseg_edge.models import ARCHS, build_model, head_channels, output_stride_of
# The floor lives in torch_floor.py (torch-free, so `checks` reads it without importing torch).
from dronseg_edge.torch_floor import SAFE_TORCH, torch_release, unsafe_torch_reason  # noqa: F401 (re-exported)

FORMAT = "dronseg-edge-checkpoint"
FORMAT_VERSION = 1


class UnsafeTorch(DronsegError):
    """The installed torch cannot unpickle a file safely (exit code 2: install another torch)."""


def check_safe_torch(what: str) -> None:
    """Refuse to unpickle ``what`` on a torch whose weights_only loading is known to be bypassable."""
    reason = unsafe_torch_reason(str(torch.__version__), what)
    if reason:
        raise UnsafeTorch(reason)


def torch_load(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, after ``check_safe_torch``; a one-line DronsegError
    naming ``what`` for a file it cannot read (a pickle holding code included: never torch's advice to load it unsafely)."""
    check_safe_torch(what)
    try:
        with warnings.catch_warnings():
            # A foreign pickle can make torch warn (e.g. about its protocol) before failing: the error says it all.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DronsegError(f"{what} cannot be read ({_short_reason(exc)})") from None


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
        state = {
            "optimizer": self.optimizer, "scheduler": self.scheduler, "scaler": self.scaler,
            "epoch": self.epoch, "step": self.step, "best_metric": self.best_metric,
            "best_metric_name": self.best_metric_name, "metrics": self.metrics, "rng": self.rng,
            "config": self.config, "split": {"train": list(self.split["train"]), "val": list(self.split["val"])},
        }
        if self.epoch_progress is not None:  # absent, not None: an end-of-epoch save has no partial epoch
            state["epoch_progress"] = self.epoch_progress
        return state

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> "TrainingState":
        """The training state of a loaded checkpoint, or a one-line DronsegError for a model-only file."""
        if "optimizer" not in ckpt or "config" not in ckpt:
            raise DronsegError(f"checkpoint {ckpt.get('path', '?')} holds no training state: resume from weights/last.pt of a run")
        return cls(
            optimizer=ckpt["optimizer"], scheduler=ckpt["scheduler"], scaler=ckpt.get("scaler") or {},
            epoch=int(ckpt["epoch"]), step=int(ckpt["step"]), best_metric=float(ckpt.get("best_metric", -math.inf)),
            best_metric_name=str(ckpt.get("best_metric_name", "")), metrics=dict(ckpt.get("metrics") or {}),
            rng=ckpt.get("rng") or {}, config=dict(ckpt["config"]),
            split={"train": recorded_split(ckpt, "train"), "val": recorded_split(ckpt, "val")},
            epoch_progress=ckpt.get("epoch_progress"),
        )


def recorded_split(ckpt: dict[str, Any], part: str) -> list[str]:
    """Image IDs of the run's ``train`` or ``val`` part as the checkpoint records them ([] when it has none).

    The checkpoint, not the run folder's split.json (a human-readable copy), is where eval, export and
    resume read the split from: a checkpoint copied alone to another machine still knows it.
    """
    return list((ckpt.get("split") or {}).get(part) or [])


def recorded_data_root(ckpt: dict[str, Any]) -> Path | None:
    """The data set folder the checkpoint was trained on (``config["data"]``), or None when it records none."""
    root = (ckpt.get("config") or {}).get("data")
    return Path(root) if root else None


def save_checkpoint(path: os.PathLike | str, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically (temporary file, then rename); adds the format tag and versions.

    A full or unwritable disk raises the one-line RuntimeFailure naming ``path`` (exit code 5), and
    the file that was there before stays as it was.
    """
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
               "torch_version": str(torch.__version__), **state}
    # An open file, not a path: torch's C++ writer drops errno, its Python one keeps the OSError (storage.py).
    with atomic_path(path) as tmp, storage_faults(path):
        with open(tmp, "wb") as handle:
            torch.save(payload, handle)
    return Path(path)


def load_checkpoint(path: os.PathLike | str, num_classes: int | None = None) -> dict[str, Any]:
    """Load and validate a dronseg-edge checkpoint (on the CPU) or raise a one-line DronsegError."""
    path = Path(path)
    if not path.is_file():
        raise DronsegError(f"checkpoint {path} does not exist: pass the .pt written by `dronseg-edge train` (weights/best.pt)")
    try:
        ckpt = torch_load(path, f"checkpoint {path}")
    except UnsafeTorch:
        raise  # the installed torch, not the file
    except DronsegError as exc:
        raise DronsegError(f"{exc}; it is damaged or not a checkpoint written by `dronseg-edge train`: re-run "
                           "training or pick another file") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DronsegError(f"{path} is not a dronseg-edge checkpoint (no '{FORMAT}' tag): pass a file written by `dronseg-edge train`")
    for key in ("model", "arch", "class_names", "input_size"):
        if key not in ckpt:
            raise DronsegError(f"checkpoint {path} lacks '{key}': it is damaged; use weights/last.pt or retrain")
    if ckpt["arch"] not in ARCHS:
        raise DronsegError(f"checkpoint {path} is for model {str(ckpt['arch'])[:60]!r}, which this version does not know")
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
    would run with class indices past the palette (black colours, stats of zero)."""
    channels = head_channels(ckpt["model"], ckpt["arch"]) if isinstance(ckpt["model"], dict) else None
    if channels is None:
        raise DronsegError(f"checkpoint {ckpt['path']} holds no classifier weights for {ckpt['arch']}: it is damaged; "
                           "use weights/last.pt or retrain")
    if channels != len(ckpt["class_names"]):
        raise DronsegError(f"checkpoint {ckpt['path']}: metadata class_names has {len(ckpt['class_names'])} names but the "
                           f"model's classifier has {channels} output channels: {CHECKPOINT_FIX}")


def _short_reason(exc: Exception) -> str:
    """One plain line from a torch.load error.

    weights_only refusals are paragraphs (the PyTorch 2.6 default change, advice to load with
    weights_only=False, "Please file an issue ...", add_safe_globals advice) with the cause mid-text:
    only the cause is kept, never the advice to load a file unsafely. Other errors may run on over
    several sentences.
    """
    text = str(exc)
    if "Weights only load failed" in text or "WeightsUnpickler error" in text:
        # The cause: after torch <= 2.13's "WeightsUnpickler error:" marker, else (2.14) the one line that is not advice.
        lines = [re.split(r" was not an allowed global| Please use|\. Please", line)[0].strip()
                 for line in text.replace("WeightsUnpickler error:", "\nWeightsUnpickler error:").splitlines() if line.strip()]
        marked = [line.split(":", 1)[1].strip() for line in lines if line.startswith("WeightsUnpickler error:")]
        advice = ("Weights only load failed", "weights_only", "trust", "Check the documentation", "(1)", "(2)")
        cause = marked[0] if marked else next((line for line in lines if not any(a in line for a in advice)), "")
        return f"it holds Python objects, not plain data: {cause}"[:200] if cause else "it holds Python objects, not plain data"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", first)  # C++ source location, no help to a user
    first = first.split(". ")[0]
    if not first or isinstance(exc, KeyError):  # KeyError's text is a bare key, e.g. '101'
        return type(exc).__name__
    return first[:200]


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


def info_from_checkpoint(ckpt: dict[str, Any], with_hash: bool = True) -> ModelInfo:
    """Kept for old call sites: the metadata's owner is ``ModelInfo.from_checkpoint``."""
    return ModelInfo.from_checkpoint(ckpt, with_hash=with_hash)
