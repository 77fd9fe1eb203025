"""The rules every ModelInfo field obeys, checked once where ModelInfo is built from a file.

Model metadata comes from files a user may have edited, copied from elsewhere or been handed:
checkpoint keys, an ONNX file's ``metadata_props``, an engine's JSON sidecar, ``--meta``. Each field
is checked for its type, range and length here, and JSON is bounded in size and nesting before it is
parsed, so a bad file is one line naming the file and the field (exit code 2), never an OverflowError
from a palette, a cv2 assertion from a zero size, a MemoryError from a huge one, a RecursionError
from deep JSON or, worst, a run that "works" with wrong colours or every pixel "background".

``metadata.py`` owns ModelInfo and its on-disk forms; this module owns only the rules.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import re
import reprlib
from typing import Any

from dronseg_edge.errors import DronsegError

HEADS = ("logits", "argmax")
# What a graph's input and outputs are. tensors: normalised float NCHW in, the head's output out
# (pre/post-processing is the runner's job). frames: uint8 NHWC frames in (``color_order``), the
# uint8 class map at the frame's own size out (export/embedded.py puts pre/post into the graph).
IO_MODES = ("tensors", "frames")
COLOR_ORDERS = ("RGB", "BGR")
LAYOUTS = ("NCHW", "NHWC")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # bf16: a checkpoint run by the torch backend
OUTPUT_STRIDES = (8, 16)

MAX_SIDE = 16384  # pixels, either side of input_size / source_size
MAX_PIXELS = 8192 * 8192  # width x height: a float32 RGB input of 0.8 GB, its 12-class logits 3.2 GB
MAX_CLASSES = 255  # class maps are uint8, and 255 marks ignored and --classes-filtered pixels (classes.IGNORE_INDEX)
MAX_BATCH = 1024
MAX_NAME = 200  # characters of a class name, output name, arch
MAX_OUTPUTS = 8
MEAN_RANGE = (0.0, 1.0)  # 0..1 units: pixels are divided by 255 before (x - mean) / std
STD_RANGE = (1e-3, 10.0)  # > 0; a tiny std would blow the normalised input up past fp16's range
MAX_JSON_BYTES = 1 << 20  # one metadata JSON (a sidecar, --meta, one ONNX entry); ours are a few kB
MAX_JSON_DEPTH = 32  # ours nest 3 deep; Python's parser recurses, so depth is bounded before parsing

# "?: an unclosed string matches to its end, never retried from each later quote
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"?')
_BRACKET = re.compile(r"[\[\]{}]")


# A checkpoint's metadata is a pickle, which may nest 100,000 deep (repr: a RecursionError) or share one list
# at every level (repr: 2^depth items): shown at most 6 levels and 6 items deep.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 1000


def _show(value: Any) -> str:
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_json(text: str | bytes, source: str, fix: str, size: int = 0) -> Any:
    """``json.loads(text)``, refused with a one-line DronsegError naming ``source`` when it is larger than
    MAX_JSON_BYTES, nests deeper than MAX_JSON_DEPTH (checked before parsing) or is not JSON. ``size``: the
    whole file's, when ``text`` is only what the bound let be read of it."""
    if len(text) > MAX_JSON_BYTES:
        raise DronsegError(f"{source}: metadata JSON of {max(size, len(text))} bytes is over the {MAX_JSON_BYTES} "
                           f"bytes a dronseg-edge file holds: {fix}")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise DronsegError(f"{source}: metadata is not UTF-8 text: {fix}") from None
    depth = max(itertools.accumulate(1 if b in "[{" else -1 for b in _BRACKET.findall(_STRING.sub('""', text))),
                default=0)
    if depth > MAX_JSON_DEPTH:
        raise DronsegError(f"{source}: metadata JSON nests {depth} levels deep (at most {MAX_JSON_DEPTH}): {fix}")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DronsegError(f"{source}: metadata is not valid JSON ({str(exc).split(':')[0]}): {fix}") from None


class _Fields:
    """Checks one field after another; ``bad`` raises the one-line error naming the file and the field."""

    def __init__(self, source: str, fix: str):
        self.source, self.fix = source, fix

    def bad(self, field: str, value: Any, problem: str) -> DronsegError:
        return DronsegError(f"{self.source}: metadata {field} {_show(value)} {problem}: {self.fix}")

    def integer(self, field: str, value: Any, low: int, high: int) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise self.bad(field, value, "is not a whole number")
        if not low <= int(value) <= high:
            raise self.bad(field, value, f"is outside {low}..{high}")
        return int(value)

    def text(self, field: str, value: Any, max_len: int = MAX_NAME, empty: bool = False) -> str:
        """``empty``: the text may be empty (a hash, a version)."""
        if not isinstance(value, str) or not (empty or value.strip()) or len(value) > max_len or not value.isprintable():
            raise self.bad(field, value, f"is not a {'' if empty else 'non-empty '}printable text of at most {max_len} characters")
        return value

    def choice(self, field: str, value: Any, choices: tuple) -> Any:
        if isinstance(value, bool) or value not in choices:
            raise self.bad(field, value, f"is not one of {', '.join(map(str, choices))}")
        return value

    def sequence(self, field: str, value: Any, length: int | None = None) -> list:
        if not isinstance(value, (list, tuple)):
            raise self.bad(field, value, "is not a list")
        if length is not None and len(value) != length:
            raise self.bad(field, value, f"has {len(value)} entries, not {length}")
        return list(value)

    def size(self, field: str, value: Any) -> tuple[int, int]:
        width, height = (self.integer(f"{field}[{i}]", v, 1, MAX_SIDE) for i, v in enumerate(self.sequence(field, value, 2)))
        if width * height > MAX_PIXELS:
            raise self.bad(field, value, f"is {width * height} pixels, over the {MAX_PIXELS} a model input may have")
        return width, height

    def numbers(self, field: str, value: Any, low: float, high: float) -> list[float]:
        values = self.sequence(field, value, 3)
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
                raise self.bad(f"{field}[{i}]", v, "is not a finite number")
            if not low <= float(v) <= high:
                raise self.bad(f"{field}[{i}]", v, f"is outside {low:g}..{high:g} (0..1 units, per RGB channel)")
        return [float(v) for v in values]

    def names(self, field: str, value: Any, min_len: int, max_len: int) -> list[str]:
        names = [self.text(f"{field}[{i}]", v) for i, v in enumerate(self.sequence(field, value))]
        if not min_len <= len(names) <= max_len:
            raise self.bad(field, value, f"has {len(names)} entries, not {min_len}..{max_len}")
        twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if twice is not None:
            raise self.bad(field, value, f"names {twice!r} twice")
        return names

    def palette(self, value: Any, classes: int) -> list[list[int]]:
        colours = self.sequence("palette", value)
        if len(colours) != classes:
            raise self.bad("palette", value, f"has {len(colours)} colours for {classes} classes")
        return [[self.integer(f"palette[{i}][{c}]", v, 0, 255) for c, v in enumerate(self.sequence(f"palette[{i}]", colour, 3))]
                for i, colour in enumerate(colours)]

    def flag(self, field: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise self.bad(field, value, "is not true or false")
        return value

    def mapping(self, field: str, value: Any) -> dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise self.bad(field, value, "is not an object with text keys")
        return dict(value)


def check_fields(values: dict[str, Any], source: str, fix: str) -> dict[str, Any]:
    """``values`` (ModelInfo keyword arguments as read from a file, ``class_names`` and ``palette``
    included) checked and normalised: sizes as (width, height) tuples, colours as int lists, mean/std
    as floats. ``source`` names the file in the error, ``fix`` says what to do. Other fields absent
    from ``values`` keep ModelInfo's defaults."""
    f = _Fields(source, fix)
    classes = f.names("class_names", values["class_names"], 1, MAX_CLASSES)
    # field -> (check, its arguments after the field name and value); None passes where ModelInfo allows it.
    rules: dict[str, tuple] = {
        "arch": (f.text,),
        "input_size": (f.size,),
        "source_size": (f.size,),
        "class_names": (lambda field, v: classes,),
        "palette": (lambda field, v: f.palette(v, len(classes)),),
        "mean": (f.numbers, *MEAN_RANGE),
        "std": (f.numbers, *STD_RANGE),
        "precision": (f.choice, PRECISIONS),
        "head": (f.choice, HEADS),
        "batch": (f.integer, 1, MAX_BATCH),
        "dynamic": (f.flag,),
        "layout": (f.choice, LAYOUTS),
        "source_sha256": (f.text, 128, True),
        "package_version": (f.text, 64, True),
        "io": (f.choice, IO_MODES),
        "color_order": (f.choice, COLOR_ORDERS),
        "outputs": (f.names, 0, MAX_OUTPUTS),
        "output_stride": (lambda field, v: f.choice(field, f.integer(field, v, 1, 64), OUTPUT_STRIDES),),
        "extra": (f.mapping,),
    }
    nullable = ("source_size", "batch", "output_stride")
    checked = {key: value if key not in rules or (value is None and key in nullable)
               else rules[key][0](key, value, *rules[key][1:]) for key, value in values.items()}
    # A batch of inputs is bounded as one input is: a 1.7 kB file declaring 1024 at 8192x8192 asked numpy for 767 GiB.
    for field in ("input_size", "source_size"):
        size, batch = checked.get(field), checked.get("batch") or 1
        if size is not None and batch * size[0] * size[1] > MAX_PIXELS:
            raise f.bad("batch", batch, f"of {size[0]}x{size[1]} ({field}) is {batch * size[0] * size[1]} pixels, "
                                        f"over the {MAX_PIXELS} a model input may have")
    return checked
