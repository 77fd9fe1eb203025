"""Pick the backend for an artifact by its file suffix (Ultralytics-style table)."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from dronseg_edge.devices import resolve_device
from dronseg_edge.errors import DronsegError
from dronseg_edge.runtime.base import Backend

# suffix -> (module, class); modules are imported only when used, so tensorrt/onnxruntime stay optional.
BACKENDS: dict[str, tuple[str, str]] = {
    ".pt": ("dronseg_edge.runtime.torch", "TorchBackend"),
    ".pth": ("dronseg_edge.runtime.torch", "TorchBackend"),
    ".onnx": ("dronseg_edge.runtime.onnxruntime", "OnnxRuntimeBackend"),
    ".engine": ("dronseg_edge.runtime.tensorrt", "TensorRTBackend"),
    ".plan": ("dronseg_edge.runtime.tensorrt", "TensorRTBackend"),
}


def backend_class(path: Path) -> type[Backend]:
    suffix = Path(path).suffix.lower()
    if suffix not in BACKENDS:
        raise DronsegError(
            f"model {path} is of an unknown kind ({suffix or 'no suffix'}): pass a checkpoint (.pt), "
            "an ONNX file (.onnx) or a TensorRT engine (.engine)"
        )
    module, name = BACKENDS[suffix]
    return getattr(importlib.import_module(module), name)


def load_backend(path: str | Path, device: str | torch.device = "auto", **options) -> Backend:
    """Construct (not yet activate) the backend for ``path``; ``options`` go to its constructor."""
    path = Path(path)
    if not path.exists():
        raise DronsegError(f"model {path} does not exist: pass a .pt checkpoint, .onnx file or .engine file")
    if path.is_dir():
        raise DronsegError(f"model {path} is a folder: pass a .pt checkpoint, .onnx file or .engine file")
    cls = backend_class(path)
    device = device if isinstance(device, torch.device) else resolve_device(str(device))
    return cls(path, device, **options)
