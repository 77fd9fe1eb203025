"""Checkpoints: one file that both resumes training and rebuilds the model.

Everything in it is plain data (tensors, numbers, strings, lists, dicts) so it loads with
``torch.load(..., weights_only=True)``: a checkpoint file is data, never code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dronseg_edge import __version__
from dronseg_edge.atomic import atomic_path
from dronseg_edge.classes import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD, PALETTE
from dronseg_edge.errors import DronsegError
from dronseg_edge.metadata import ModelInfo, sha256_file
from dronseg_edge.models import ARCHS, build_model

FORMAT = "dronseg-edge-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: os.PathLike | str, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically (temporary file, then rename); adds the format tag and versions."""
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, "package_version": __version__,
               "torch_version": str(torch.__version__), **state}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: os.PathLike | str, num_classes: int | None = None) -> dict[str, Any]:
    """Load and validate a dronseg-edge checkpoint (on the CPU) or raise a one-line DronsegError."""
    path = Path(path)
    if not path.is_file():
        raise DronsegError(f"checkpoint {path} does not exist: pass the .pt written by `dronseg-edge train` (weights/best.pt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        detail = _short_reason(exc)
        raise DronsegError(f"checkpoint {path} cannot be read ({detail}); it is corrupt or not a torch file: re-run training or pick another file") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DronsegError(f"{path} is not a dronseg-edge checkpoint (no '{FORMAT}' tag): pass a file written by `dronseg-edge train`")
    for key in ("model", "arch", "class_names", "input_size"):
        if key not in ckpt:
            raise DronsegError(f"checkpoint {path} lacks '{key}': it is damaged; use weights/last.pt or retrain")
    if ckpt["arch"] not in ARCHS:
        raise DronsegError(f"checkpoint {path} is for model {ckpt['arch']!r}, which this version does not know")
    if num_classes is not None and len(ckpt["class_names"]) != num_classes:
        raise DronsegError(
            f"checkpoint {path} predicts {len(ckpt['class_names'])} classes, but {num_classes} are needed "
            f"({', '.join(CLASS_NAMES)}): retrain it with this version"
        )
    ckpt["path"] = str(path)
    return ckpt


def _short_reason(exc: Exception) -> str:
    """The informative line of a torch.load error (weights_only errors bury it mid-text)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "Unsupported global" in line or "WeightsUnpickler error" in line:
            return line[:200]
    return (lines[0][:200] if lines else type(exc).__name__)


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the model of a loaded checkpoint with its weights, in eval mode, on the CPU."""
    model = build_model(ckpt["arch"], num_classes=len(ckpt["class_names"]), weights="none",
                        aux_loss=bool(ckpt.get("aux_loss", False)))
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
    """The artifact metadata of a checkpoint (its training size, classes, palette, normalisation)."""
    source = ckpt.get("path")
    return ModelInfo(
        arch=ckpt["arch"],
        input_size=(int(ckpt["input_size"][0]), int(ckpt["input_size"][1])),
        class_names=list(ckpt["class_names"]),
        palette=[list(map(int, c)) for c in ckpt.get("palette", PALETTE)],
        mean=list(map(float, ckpt.get("mean", IMAGENET_MEAN))),
        std=list(map(float, ckpt.get("std", IMAGENET_STD))),
        precision="fp32",
        head="logits",
        batch=None,
        dynamic=True,
        source_sha256=sha256_file(Path(source)) if (with_hash and source) else "",
    )
