"""The metadata every artifact carries, so ``infer`` and ``bench`` need nothing but the file.

Checkpoints hold it as plain keys, ONNX files in ``metadata_props`` (one JSON value per key),
TensorRT engines in a JSON sidecar next to the ``.engine`` file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dronseg_edge import __version__
from dronseg_edge.classes import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD, PALETTE
from dronseg_edge.errors import DronsegError

HEADS = ("logits", "argmax")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass
class ModelInfo:
    """What a runner must know about a model artifact.

    ``input_size`` is (width, height) in pixels; ``batch`` is None for a dynamic batch.
    ``head='logits'`` outputs (N, C, H, W) float scores, ``head='argmax'`` an (N, H, W) class map.
    """

    arch: str
    input_size: tuple[int, int]
    class_names: list[str] = field(default_factory=lambda: list(CLASS_NAMES))
    palette: list[list[int]] = field(default_factory=lambda: [list(c) for c in PALETTE])
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    precision: str = "fp32"
    head: str = "logits"
    batch: int | None = 1
    dynamic: bool = False
    layout: str = "NCHW"
    source_sha256: str = ""
    package_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["input_size"] = list(self.input_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "artifact") -> "ModelInfo":
        """Build from a dict (unknown keys go to ``extra``); raise DronsegError naming ``source``."""
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        extra = dict(kwargs.pop("extra", {}) or {})
        extra.update({k: v for k, v in data.items() if k not in known})
        missing = [k for k in ("arch", "input_size") if k not in kwargs]
        if missing:
            raise DronsegError(
                f"{source} has no dronseg-edge metadata ({', '.join(missing)} missing): "
                "re-export it with `dronseg-edge export`"
            )
        try:
            kwargs["input_size"] = (int(kwargs["input_size"][0]), int(kwargs["input_size"][1]))
        except (TypeError, ValueError, IndexError):
            raise DronsegError(f"{source}: metadata input_size {kwargs['input_size']!r} is not [width, height]") from None
        info = cls(**kwargs, extra=extra)
        if info.head not in HEADS:
            raise DronsegError(f"{source}: metadata head {info.head!r} is not one of {HEADS}")
        if len(info.palette) != info.num_classes:
            raise DronsegError(f"{source}: metadata has {info.num_classes} classes but {len(info.palette)} colours")
        return info

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
