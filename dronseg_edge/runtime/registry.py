"""Pick the backend for an artifact by its file suffix (Ultralytics-style table)."""

from __future__ import annotations

import contextlib
import importlib
from pathlib import Path

from dronseg_edge.devices import Device, resolve_device, resolve_lean_device
from dronseg_edge.errors import DronsegError
from dronseg_edge.metadata import ModelInfo, read_engine_sidecar, read_info_json, read_onnx_info
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
    if not path.is_file():  # a named pipe or a device: read as missing further on
        raise DronsegError(f"model {path} is not a regular file (a pipe or a device): {_WHAT_TO_PASS}")
    _table_entry(path)
    return path


def backend_class(path: Path) -> type[Backend]:
    module, name = _table_entry(Path(path))
    return getattr(importlib.import_module(module), name)


def read_meta_file(meta: str | Path) -> ModelInfo:
    """``--meta FILE``: the metadata of an ONNX file (its ``metadata_props``) or of a sidecar JSON
    (``model.engine.json``, or any JSON object of ModelInfo fields); DronsegError naming the fix."""
    meta = Path(meta)
    what = "pass the ONNX file the model was built from, or a dronseg-edge sidecar JSON (model.engine.json)"
    if not meta.is_file():
        raise DronsegError(f"--meta {meta} does not exist{' (a folder)' if meta.is_dir() else ''}: {what}")
    if meta.suffix.lower() == ".onnx":
        return read_onnx_info(meta)
    if meta.suffix.lower() != ".json":
        raise DronsegError(f"--meta {meta} is neither an .onnx nor a .json file: {what}")
    return read_info_json(meta, f"--meta {meta}", what)


def resolve_device_for(path: str | Path, device):
    """``device`` (a ``--device`` string, a GPU index, a ``torch.device`` or a ``devices.Device``) as the
    backend of ``path`` takes it: a torch.device for a checkpoint, else a torch-free Device (so running
    an ONNX file or engine never imports torch). Each is checked as its ``--device`` string is, but for a
    Device (resolved already) given with a file that is not a checkpoint."""
    if isinstance(device, Device) and not is_checkpoint(path):
        return device
    name = "auto" if device is None else str(device)  # 0 -> "0" (cuda:0); torch.device("cuda:1") -> "cuda:1"
    return resolve_device(name) if is_checkpoint(path) else resolve_lean_device(name)


def load_backend(path: str | Path, device="auto", *, meta: str | Path | None = None, **options) -> Backend:
    """Construct (not yet activate) the backend for ``path`` and read its metadata; ``options`` go to its constructor.

    ``device``: see ``resolve_device_for``. Reading ``info`` here (the constructor does not) makes a foreign
    or damaged file fail where the command names it, before any device work.
    ``meta`` (``--meta FILE``, see ``read_meta_file``): metadata for an ``.onnx``/``.engine`` that lacks
    its own (an engine built with trtexec or Polygraphy, a foreign ONNX); it replaces the file's own
    read. An engine so described has no build record: its GPU/TensorRT version is not checked
    beforehand (a warning says so) and TensorRT's own deserialisation decides.
    """
    path = check_model_file(path)
    if meta is not None and is_checkpoint(path):
        raise DronsegError(f"--meta applies to .onnx and .engine files; checkpoint {path} carries its own metadata: drop --meta")
    backend = backend_class(path)(path, resolve_device_for(path, device), **options)
    if meta is not None:
        info = read_meta_file(meta)
        if "tensorrt" not in info.extra and path.suffix.lower() in (".engine", ".plan"):  # its own build record stays
            with contextlib.suppress(DronsegError, KeyError):  # (for the GPU/version check), where it has one
                info.extra = {**info.extra, "tensorrt": read_engine_sidecar(path).extra["tensorrt"]}
        backend.info = info  # the cached property's value: the backend's own read never runs
    backend.info  # noqa: B018
    return backend
