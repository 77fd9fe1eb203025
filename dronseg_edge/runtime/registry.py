"""Pick the backend for an artifact by its file suffix (Ultralytics-style table)."""

from __future__ import annotations

import importlib
from pathlib import Path

from dronseg_edge.devices import Device, resolve_device, resolve_lean_device
from dronseg_edge.errors import DronsegError
from dronseg_edge.runtime.base import Backend

# The suffixes of a training checkpoint: export, parity and bench --matrix start from these files.
CHECKPOINT_SUFFIXES = (".pt", ".pth")

# suffix -> (module, class); modules are imported only when used, so tensorrt/onnxruntime stay optional.
BACKENDS: dict[str, tuple[str, str]] = {
    **{suffix: ("dronseg_edge.runtime.torch", "TorchBackend") for suffix in CHECKPOINT_SUFFIXES},
    ".onnx": ("dronseg_edge.runtime.onnxruntime", "OnnxRuntimeBackend"),
    ".engine": ("dronseg_edge.runtime.tensorrt", "TensorRTBackend"),
    ".plan": ("dronseg_edge.runtime.tensorrt", "TensorRTBackend"),
}

_WHAT_TO_PASS = "pass a .pt checkpoint, .onnx file or .engine file"


def is_checkpoint(path: str | Path) -> bool:
    """True for a training checkpoint's name (``.pt``/``.pth``, any case); the file need not exist."""
    return Path(path).suffix.lower() in CHECKPOINT_SUFFIXES


def _table_entry(path: Path) -> tuple[str, str]:
    suffix = path.suffix.lower()
    if suffix not in BACKENDS:
        raise DronsegError(
            f"model {path} is of an unknown kind ({suffix or 'no suffix'}): pass a checkpoint (.pt), "
            "an ONNX file (.onnx) or a TensorRT engine (.engine)"
        )
    return BACKENDS[suffix]


def check_model_file(path: str | Path) -> Path:
    """Raise DronsegError unless ``path`` is an existing file of a known kind (suffix); returns it as a Path.

    Cheap (imports no backend), so a command can check all its files before it opens any.
    """
    path = Path(path)
    if not path.exists():
        raise DronsegError(f"model {path} does not exist: {_WHAT_TO_PASS}")
    if path.is_dir():
        raise DronsegError(f"model {path} is a folder: {_WHAT_TO_PASS}")
    _table_entry(path)
    return path


def backend_class(path: Path) -> type[Backend]:
    module, name = _table_entry(Path(path))
    return getattr(importlib.import_module(module), name)


def load_backend(path: str | Path, device="auto", **options) -> Backend:
    """Construct (not yet activate) the backend for ``path`` and read its metadata; ``options`` go to its constructor.

    ``device``: a ``--device`` string, a ``torch.device`` or a ``devices.Device``. A string becomes a
    torch.device for a checkpoint and a torch-free Device for an ONNX file or engine (so running
    those never imports torch). Reading ``info`` here (the constructor does not) makes a foreign
    or damaged file fail where the command names it, before any device work.
    """
    path = check_model_file(path)
    cls = backend_class(path)
    if isinstance(device, (str, type(None))):
        device = resolve_device(device or "auto") if is_checkpoint(path) else resolve_lean_device(device or "auto")
    elif isinstance(device, Device) and is_checkpoint(path):
        device = resolve_device(str(device))
    backend = cls(path, device, **options)
    backend.info  # noqa: B018
    return backend
