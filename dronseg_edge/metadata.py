"""The metadata every artifact carries, so ``infer`` and ``bench`` need nothing but the file.

This module owns its three on-disk forms:

- checkpoints hold it as plain keys (``ModelInfo.from_checkpoint``);
- ONNX files in ``metadata_props``, one JSON-encoded value per ModelInfo field (so ONNX Runtime's
  ``custom_metadata_map`` and Netron show them too), plus a marker entry;
- TensorRT engines in a JSON sidecar, ``model.engine`` -> ``model.engine.json``, since a plan cannot
  carry free-form data; ``extra["tensorrt"]`` says which GPU and TensorRT version built it.

Reading an ONNX file's metadata does not import ``onnx``: the deployable path (an ``.onnx`` run by
ONNX Runtime on a Jetson) must stay light, so ``metadata_props`` is read straight off the protobuf
wire format (``onnx_wire``), seeking past the graph and its weights (see ``read_onnx_metadata_props``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dronseg_edge import __version__, onnx_wire
from dronseg_edge.atomic import write_json_atomic
from dronseg_edge.classes import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD, PALETTE
from dronseg_edge.errors import DronsegError
# HEADS, IO_MODES, COLOR_ORDERS: the field choices live with the rules, and are imported from here too.
from dronseg_edge.metadata_checks import COLOR_ORDERS, HEADS, IO_MODES, MAX_JSON_BYTES, check_fields, load_json  # noqa: F401
from dronseg_edge.option_fields import OptionSpec

if TYPE_CHECKING:  # annotations only: writing and reading metadata never needs the onnx package
    import onnx

MARKER_KEY = "dronseg_edge"  # present in every ONNX file this package writes; its value is the metadata layout version
MARKER_VERSION = "1"
SIDECAR_FORMAT = "dronseg-edge-engine"
# What a user does about bad metadata, by where it came from (the error names the file and the field).
REEXPORT = "re-export it with `dronseg-edge export CHECKPOINT`"
CHECKPOINT_FIX = "the checkpoint was edited or damaged: use one written by `dronseg-edge train`"
# --meta of infer, eval, parity and bench (option_fields.py; runtime/registry.read_meta_file reads it).
META = OptionSpec("Metadata for an .engine without its .engine.json (built with trtexec or Polygraphy) or a foreign "
                  ".onnx (for parity: the candidate): the ONNX it was built from, or a sidecar JSON.",
                  names=("--meta",), metavar="FILE", default_text="the model's own")


def default_output_stride(arch: str) -> int:
    """The output stride torchvision builds ``arch`` with: 16 for the MobileNetV3 models (only their last
    stage is dilated), 8 for the DeepLabV3 ResNets; what every file written before the field existed has."""
    return 16 if "mobilenet" in arch else 8


class NoMetadata(DronsegError):
    """A file without dronseg-edge metadata (a foreign ONNX, say): callers add how to supply it."""


@dataclass
class ModelInfo:
    """What a runner must know about a model artifact.

    ``input_size`` is (width, height) in pixels; ``batch`` is None for a dynamic batch.
    ``head='logits'`` outputs (N, C, H, W) float scores, ``head='argmax'`` an (N, H, W) class map.
    ``io='frames'``: the graph takes (N, H, W, 3) uint8 frames in ``color_order`` at ``source_size``
    (W, H; None when ``dynamic``) and returns ``outputs``: ``mask`` (N, H, W) uint8 class map at the
    frame's size, and with ``confidence`` (N, H, W) uint8 max softmax x 255; ``input_size`` stays
    the model's own input inside the graph. ``io='tensors'``: normalised float RGB NCHW at ``input_size``,
    pixel values x / 255 then (x - mean) / std per channel. ``output_stride``: input size / backbone
    feature size (8 or 16; None becomes the arch's default, so files without the field read as built).
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
    io: str = "tensors"
    source_size: tuple[int, int] | None = None
    color_order: str = "RGB"
    outputs: list[str] = field(default_factory=list)  # graph output names; [] = the head's one output
    output_stride: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.output_stride is None:
            self.output_stride = default_output_stride(self.arch)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["input_size"] = list(self.input_size)
        data["source_size"] = list(self.source_size) if self.source_size is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "artifact", fix: str = REEXPORT) -> "ModelInfo":
        """Build from a dict (unknown keys go to ``extra``), every field checked (metadata_checks.py);
        raise a one-line DronsegError naming ``source``, the field and ``fix``."""
        if not isinstance(data, dict):
            raise DronsegError(f"{source}: metadata is {type(data).__name__}, not an object of fields: {fix}")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        missing = [k for k in ("arch", "input_size") if k not in kwargs]
        if missing:
            raise NoMetadata(f"{source} has no dronseg-edge metadata ({', '.join(missing)} missing): {fix}")
        kwargs.setdefault("class_names", list(CLASS_NAMES))
        kwargs.setdefault("palette", [list(c) for c in PALETTE])
        kwargs = check_fields(kwargs, source, fix)
        extra = dict(kwargs.pop("extra", {}) or {})
        extra.update({k: v for k, v in data.items() if k not in known})
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], with_hash: bool = True) -> "ModelInfo":
        """The metadata of a loaded checkpoint (its training size, classes, palette, normalisation),
        every field checked like a file's (one-line DronsegError naming the checkpoint and the field).

        ``with_hash`` hashes the file at ``ckpt["path"]`` into ``source_sha256`` (reads it whole).
        """
        path = ckpt.get("path")
        fields = {key: ckpt[key] for key in ("arch", "input_size", "class_names", "palette", "mean", "std", "output_stride")
                  if key in ckpt}  # output_stride None or absent (older checkpoints): the arch's default
        info = cls.from_dict({**fields, "precision": "fp32", "head": "logits", "batch": None, "dynamic": True},
                             source=f"checkpoint {path or '(in memory)'}", fix=CHECKPOINT_FIX)
        info.source_sha256 = sha256_file(Path(path)) if (with_hash and path) else ""
        return info


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- ONNX metadata_props ----------------------------------------------------------------------

def set_onnx_metadata(model: "onnx.ModelProto", info: ModelInfo) -> "onnx.ModelProto":
    """Replace the dronseg-edge entries of ``model.metadata_props`` with ``info``, and describe the graph's
    input and outputs in plain words, in ``input_description``/``output_description`` and in the model's,
    graph's, input's and outputs' doc strings (``describe_io``).

    Every value is JSON: other tools' entries stay, JSON-encoded as a string where they were plain text
    (onnxruntime's quantizer adds ``onnx.infer`` and ``onnx.quant.pre_process`` = ``onnxruntime.quant``).
    """
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers][:1]
    texts = describe_io(info, inputs[0].name if inputs else "input", [o.name for o in graph.output])
    fields = {key: json.dumps(value) for key, value in info.to_dict().items()}
    fields["input_description"] = json.dumps(texts["input"])
    fields["output_description"] = json.dumps(" ".join(texts["outputs"].values()))
    fields[MARKER_KEY] = MARKER_VERSION
    kept = [(p.key, _as_json(p.value)) for p in model.metadata_props if p.key not in fields]
    del model.metadata_props[:]
    for key, value in kept + sorted(fields.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = graph.doc_string = texts["model"]
    for value_info in inputs:
        value_info.doc_string = texts["input"]
    for value_info in graph.output:
        value_info.doc_string = texts["outputs"].get(value_info.name, "")
    return model


def _as_json(value: str) -> str:
    try:
        json.loads(value)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's stack: kept as a JSON string
        return json.dumps(value)
    return value


def describe_io(info: ModelInfo, input_name: str, output_names: list[str]) -> dict[str, Any]:
    """Plain-language contract of a graph: ``{'model': text, 'input': text, 'outputs': {name: text}}``.

    What a stranger needs to feed the file: colour order, pixel scale, that ``input_size`` is
    [width, height] while tensors are N x C x H x W (or N x H x W x 3 for frames graphs), and what
    the outputs hold, in ``class_names`` order.
    """
    width, height = info.input_size
    batch = "N (any)" if info.batch is None else str(info.batch)
    classes = f"{info.num_classes} classes in class_names order (index i = class_names[i], colour palette[i])"
    if info.io == "frames":
        frame = "any H x W" if info.source_size is None else f"H x W = {info.source_size[1]} x {info.source_size[0]}"
        text_in = (f"{input_name}: uint8 frames, shape {batch} x H x W x 3 (NHWC), {frame} (source_size is "
                   f"[width, height]), channels in {info.color_order} order as cv2.imread and cv2.VideoCapture give "
                   "them, values 0..255 unscaled; the graph itself resizes them to the model input (input_size "
                   f"[width, height] = [{width}, {height}]), divides by 255 and normalises with mean/std.")
        outputs = {name: (f"{name}: uint8 class map, shape {batch} x H x W at the frame's own size, each value a class index, "
                          f"{classes}." if name != "confidence" else
                          f"{name}: uint8, shape {batch} x H x W, the winning class's softmax probability x 255.")
                   for name in output_names}
        what = "uint8 BGR frames in, uint8 class map out (pre- and post-processing inside the graph)"
    else:
        size = ("H x W of any size (trained at input_size)" if info.dynamic
                else f"H x W = {height} x {width} (input_size is [width, height] = [{width}, {height}])")
        text_in = (f"{input_name}: float32 tensor, shape {batch} x 3 x H x W (NCHW), {size}; channels in "
                   f"{info.color_order} order; each 0..255 pixel value x becomes (x / 255 - mean[c]) / std[c], "
                   f"mean {_numbers(info.mean)}, std {_numbers(info.std)}.")
        if info.head == "argmax":
            outputs = {name: f"{name}: uint8 class map, shape {batch} x H x W, each value a class index, {classes}."
                       for name in output_names}
        else:
            outputs = {name: (f"{name}: float32 raw logits (no softmax), shape {batch} x {info.num_classes} x H x W at the "
                              "input's H x W; channel i scores class_names[i] (colour palette[i]); argmax over the "
                              "channels gives the class map.") for name in output_names}
        what = f"{info.color_order} float NCHW in, " + ("uint8 class map out" if info.head == "argmax" else "float logits out")
    model = (f"dronseg-edge semantic segmentation ({info.arch}, output stride {info.output_stride}, {info.precision}): "
             f"{what}. Class names, palette, mean/std and sizes are in the metadata_props (JSON values).")
    return {"model": model, "input": text_in, "outputs": outputs}


def _numbers(values: list[float]) -> str:
    return "[" + ", ".join(f"{float(v):g}" for v in values) + "]"


def _decode_props(props: list[tuple[str, str]], source: str) -> dict[str, Any]:
    found = dict(props)  # a repeated key: the last entry wins, as in onnx's own dict of them
    if MARKER_KEY not in found:
        raise NoMetadata(
            f"{source} has no dronseg-edge metadata (class names, input size, normalisation): "
            "export it with `dronseg-edge export CHECKPOINT`"
        )
    ours = {f.name for f in dataclasses.fields(ModelInfo)}  # other tools' entries (author, ...) stay out
    return {key: load_json(value, f"{source} entry {key}", REEXPORT) for key, value in found.items() if key in ours}


def read_onnx_info(path: Path) -> ModelInfo:
    """ModelInfo from an ONNX file's ``metadata_props``; DronsegError if unreadable or foreign."""
    path = Path(path)
    if not path.is_file():
        raise DronsegError(f"ONNX file {path} is a folder, not a file: pass the .onnx itself" if path.is_dir() else
                           f"ONNX file {path} does not exist: export one with `dronseg-edge export CHECKPOINT`")
    try:
        props = read_onnx_metadata_props(path)
    except (OSError, EOFError, ValueError) as exc:  # truncated, or not protobuf (UnicodeDecodeError is a ValueError)
        raise DronsegError(f"{path} is not a readable ONNX file ({type(exc).__name__}): re-export it") from None
    return ModelInfo.from_dict(_decode_props(props, str(path)), source=str(path))


# ModelProto's metadata_props, read with onnx_wire: the graph and its weights (field 7, often hundreds of
# MB) cost one seek. onnx.load would parse and copy all of it.
_METADATA_PROPS = 14  # ModelProto: repeated StringStringEntryProto metadata_props = 14
_ENTRY_KEY, _ENTRY_VALUE = 1, 2  # StringStringEntryProto: string key = 1; string value = 2
MAX_PROPS_BYTES = 4 << 20  # all metadata_props together (ours: a few kB); nothing past it is read into memory
MAX_PROPS = 1024  # entries


def read_onnx_metadata_props(path: Path) -> list[tuple[str, str]]:
    """The (key, value) pairs of an ONNX file's ``metadata_props``, in file order.

    EOFError for a truncated file, ValueError for bytes that are not a protobuf message, DronsegError
    for props over MAX_PROPS_BYTES in all or MAX_PROPS entries (a crafted file could claim gigabytes),
    refused before they are read.
    """
    refused = f": not a file dronseg-edge wrote; {REEXPORT}"
    with open(path, "rb") as handle:  # buffered: the byte-by-byte varint reads cost no system calls
        end = handle.seek(0, io.SEEK_END)
        handle.seek(0)
        props: list[tuple[str, str]] = []
        budget = MAX_PROPS_BYTES
        for number, wire_type, size in onnx_wire.fields(handle, end):
            if number != _METADATA_PROPS or wire_type != 2:
                continue
            if len(props) >= MAX_PROPS:
                raise DronsegError(f"{path}: metadata_props hold more than {MAX_PROPS} entries{refused}")
            if size > budget:
                raise DronsegError(f"{path}: metadata_props hold more than {MAX_PROPS_BYTES} bytes{refused}")
            budget -= size
            entry = onnx_wire.strings(handle, handle.tell() + size)
            props.append((entry.get(_ENTRY_KEY, b"").decode("utf-8"), entry.get(_ENTRY_VALUE, b"").decode("utf-8")))
    return props


# -- TensorRT engine sidecar -------------------------------------------------------------------

def sidecar_path(engine_path: Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".json")


def write_engine_sidecar(engine_path: Path, info: ModelInfo) -> Path:
    """Write the engine's metadata JSON atomically; ``info.extra['tensorrt']`` should say what built it. (Its engine's
    name, which export writes under a working name before the rename, is the sidecar's own less ``.json``.)"""
    data = {"format": SIDECAR_FORMAT, **info.to_dict()}
    return write_json_atomic(sidecar_path(engine_path), data)


def read_engine_sidecar(engine_path: Path, missing: str | None = None) -> ModelInfo:
    """ModelInfo of an engine from its sidecar; DronsegError naming the file and the fix when bad, NoMetadata
    when absent (``missing``: the fix then, default a rebuild)."""
    side = sidecar_path(engine_path)
    rebuild = "rebuild the engine with `dronseg-edge export CHECKPOINT --format engine`, which writes both files"
    if not side.is_file():  # built with trtexec or Polygraphy, or copied without it
        raise NoMetadata(f"engine {engine_path} has no metadata file {side.name} beside it: {missing or rebuild}")
    return read_info_json(side, str(side), rebuild, engine=True)


def read_info_json(path: Path, source: str, fix: str, engine: bool = False) -> ModelInfo:
    """ModelInfo from a metadata JSON file (an engine's sidecar, whose ``format`` tag is required; ``--meta``),
    bounded in size and depth (metadata_checks.load_json); only the bytes the bound allows are read."""
    try:
        with open(path, "rb") as handle:
            text, size = handle.read(MAX_JSON_BYTES + 1), os.fstat(handle.fileno()).st_size
    except OSError as exc:
        raise DronsegError(f"{source} cannot be read ({exc.strerror or type(exc).__name__}): {fix}") from None
    data = load_json(text, source, fix, size)
    if not isinstance(data, dict) or data.get("format", None if engine else SIDECAR_FORMAT) != SIDECAR_FORMAT:
        raise DronsegError(f"{source} is not a dronseg-edge {'engine ' if engine else ''}metadata file: {fix}")
    return ModelInfo.from_dict({k: v for k, v in data.items() if k not in ("format", "engine")}, source=source, fix=fix)
