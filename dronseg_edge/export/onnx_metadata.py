"""Artifact metadata on disk: ONNX ``metadata_props`` and the JSON sidecar of a TensorRT engine.

An ONNX file holds one ``metadata_props`` entry per ModelInfo field, each value JSON-encoded (so
ONNX Runtime's ``custom_metadata_map`` and Netron show them too). A TensorRT plan cannot carry
free-form data, so ``model.engine`` gets ``model.engine.json`` beside it: the same fields, with
``extra["tensorrt"]`` saying which GPU and TensorRT version built it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import onnx

from dronseg_edge.atomic import write_json_atomic
from dronseg_edge.errors import DronsegError
from dronseg_edge.metadata import ModelInfo

MARKER_KEY = "dronseg_edge"  # present in every file this package writes; its value is the metadata layout version
MARKER_VERSION = "1"
SIDECAR_FORMAT = "dronseg-edge-engine"


def set_onnx_metadata(model: onnx.ModelProto, info: ModelInfo) -> onnx.ModelProto:
    """Replace the dronseg-edge entries of ``model.metadata_props`` with ``info`` (other entries stay)."""
    fields = {key: json.dumps(value) for key, value in info.to_dict().items()}
    fields[MARKER_KEY] = MARKER_VERSION
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in fields]
    del model.metadata_props[:]
    for key, value in kept + sorted(fields.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model


def onnx_metadata_dict(model: onnx.ModelProto, source: str = "ONNX file") -> dict[str, Any]:
    """The decoded dronseg-edge metadata of a loaded model (raises DronsegError when there is none)."""
    props = {p.key: p.value for p in model.metadata_props}
    if MARKER_KEY not in props:
        raise DronsegError(
            f"{source} has no dronseg-edge metadata (class names, input size, normalisation): "
            "export it with `dronseg-edge export CHECKPOINT`"
        )
    ours = {f.name for f in dataclasses.fields(ModelInfo)}  # other tools' entries (author, ...) stay out
    data: dict[str, Any] = {}
    for key, value in props.items():
        if key not in ours:
            continue
        try:
            data[key] = json.loads(value)
        except json.JSONDecodeError:
            raise DronsegError(f"{source}: metadata entry {key!r} is not valid JSON: re-export the file") from None
    return data


def read_onnx_info(path: Path) -> ModelInfo:
    """ModelInfo from an ONNX file's ``metadata_props``; DronsegError if unreadable or foreign."""
    path = Path(path)
    if not path.is_file():
        raise DronsegError(f"ONNX file {path} does not exist: export one with `dronseg-edge export CHECKPOINT`")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf DecodeError, truncated file, ...
        raise DronsegError(f"{path} is not a readable ONNX file ({type(exc).__name__}): re-export it") from None
    return ModelInfo.from_dict(onnx_metadata_dict(model, str(path)), source=str(path))


def sidecar_path(engine_path: Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def write_engine_sidecar(engine_path: Path, info: ModelInfo) -> Path:
    """Write the engine's metadata JSON atomically; ``info.extra['tensorrt']`` should say what built it."""
    data = {"format": SIDECAR_FORMAT, "engine": Path(engine_path).name, **info.to_dict()}
    return write_json_atomic(sidecar_path(engine_path), data)


def read_engine_sidecar(engine_path: Path) -> ModelInfo:
    """ModelInfo of an engine from its sidecar; DronsegError naming the file and the fix when absent or bad."""
    side = sidecar_path(engine_path)
    rebuild = "rebuild the engine with `dronseg-edge export CHECKPOINT --format engine`, which writes both files"
    if not side.is_file():
        raise DronsegError(f"engine {engine_path} has no metadata file {side.name} beside it: {rebuild}")
    try:
        data = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DronsegError(f"engine metadata {side} cannot be read ({type(exc).__name__}): {rebuild}") from None
    if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
        raise DronsegError(f"{side} is not a dronseg-edge engine metadata file: {rebuild}")
    data = {k: v for k, v in data.items() if k not in ("format", "engine")}
    return ModelInfo.from_dict(data, source=str(side))
