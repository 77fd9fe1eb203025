"""The options of one export, as one frozen value: defaults and validation live here and nowhere else.

The CLI builds an ``ExportOptions`` once; ``export_artifact`` and everything below it read that
object. A derived export (the ONNX graph an engine is built from) is ``dataclasses.replace(options,
...)``, which validates again, so no code path holds an unchecked combination.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dronseg_edge.devices import DEVICE
from dronseg_edge.errors import DronsegError
from dronseg_edge.metadata import HEADS, IO_MODES
from dronseg_edge.option_fields import one_of, option, whole
from dronseg_edge.sizes import parse_size

if TYPE_CHECKING:  # the CLI reads these options for --help without torch
    import torch

    from dronseg_edge.export.parity_report import ParityThresholds

FORMATS = ("onnx", "engine", "triton")  # triton: a Triton model repository around the ONNX file (or engine)
TRITON_BACKENDS = ("onnxruntime", "tensorrt")  # export.triton serves model.onnx or model.plan
EXPORT_PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_METHODS = ("minmax", "percentile")  # export.quantize implements these
DEFAULT_CALIBRATION_METHOD = "percentile"
DEFAULT_OPSET = {"torchscript": 17, "dynamo": 18}  # export.onnx: the dynamo exporter writes 18 and up
CALIB_IMAGES = 32
PARITY_IMAGES = 16
MAX_WORKSPACE_GIB = 1024  # TensorRT's and ONNX Runtime's workspace limit is a byte count (Triton: a uint64)
DLA_PRECISIONS = ("fp16", "int8")  # DLA has no fp32 kernels
# The options that only a TensorRT build reads (the CLI refuses them for an export that builds none).
ENGINE_OPTIONS = {"dla_core": "--dla-core", "builder_opt_level": "--builder-opt-level", "min_shape": "--min-shape",
                  "opt_shape": "--opt-shape", "max_shape": "--max-shape", "timing_cache": "--timing-cache",
                  "trt_verbose": "--trt-verbose"}
SHAPE_HELP = ("--dynamic engines: the {} input shape of TensorRT's optimisation profile (trtexec --{}Shapes), as "
              "BATCHxWIDTHxHEIGHT of the model input (--io frames: of the frames), e.g. 1x320x192.")


def _int(value) -> int:
    """A whole number as an int ("2", 2.0 and numpy's 2 too); ValueError for 2.5 and True, not 2 and 1."""
    number = int(value) if isinstance(value, str) else value
    if isinstance(value, bool) or int(number) != number:
        raise ValueError(value)
    return int(number)


# (conversion, fields, whether None stays None) for ExportOptions.__post_init__.
_NORMALISE = ((_int, ("batch", "calib_images", "parity_images"), False), (float, ("workspace_gib",), False),
              (bool, ("dynamic", "parity", "reuse", "keep", "confidence", "dynamic_batch", "trt_verbose"), False),
              (Path, ("calib_data", "parity_data", "out_dir", "timing_cache"), True),
              (parse_size, ("size",), True), (functools.partial(parse_size, option="--source-size"), ("source_size",), True),
              (lambda shape: parse_shape(shape if isinstance(shape, str) else "x".join(map(str, shape))
                                         if isinstance(shape, (tuple, list)) else repr(shape)),
               ("min_shape", "opt_shape", "max_shape"), True),  # '1x64x64' as the CLI takes it, or (1, 64, 64)
              (_int, ("dla_core", "builder_opt_level", "opset"), True))  # opset "17": --reuse compares ints


def parse_shape(text: str) -> tuple[int, int, int]:
    """``'4x1280x720'`` -> (batch, width, height), the way --size writes a size with the batch in front."""
    batch, _, size = str(text).strip().partition("x")
    if not batch.strip().isdigit() or int(batch) < 1:
        raise DronsegError(f"shape {text!r} is not BATCHxWIDTHxHEIGHT: write it like 1x320x192")
    return (int(batch), *parse_size(size, f"the size in shape {text!r}"))


@dataclass(frozen=True)
class ExportOptions:
    """How to export a checkpoint; the fields with help text are `export`'s options (option_fields.py), the
    rest: ``fmt`` (onnx | engine | triton; ``triton`` implies ``dynamic_batch`` unless ``dynamic``: Triton
    batches along a model's first dimension only when it is free), ``thresholds`` (None: the precision's),
    ``reuse`` (return an existing file of the same name made from the same checkpoint with the same options;
    the engine path and ``bench --matrix`` use it), ``keep`` (with ``reuse``: raise rather than replace such a file
    calibrated otherwise, or a file of that name from another checkpoint or without our metadata, perhaps the user's
    own; ``bench --matrix``).
    Sizes are (width, height), shapes (batch, width, height); a None size is the training size. Invalid values raise
    DronsegError.
    """

    fmt: str = "onnx"
    precision: str = option("fp32", "fp32, fp16 or int8 (Q/DQ, calibrated on real images).")
    size: tuple[int, int] | None = option(None, "Input WxH.", parse=parse_size, default_text="the training size")
    batch: int = option(1, "Fixed batch size (with --dynamic or --dynamic-batch: the batch engines are tuned for).")
    dynamic: bool = option(False, "Dynamic batch, height and width (static is faster).")
    opset: int | None = option(None, "ONNX opset.", default_text=f"{DEFAULT_OPSET['torchscript']}; {DEFAULT_OPSET['dynamo']} "
                                                                   "where torch has only the dynamo exporter")
    head: str = option("logits", "logits (N,C,H,W) or argmax (N,H,W uint8 class map).")
    calib_data: Path | None = option(None, "int8 calibration images: dataset root or image folder.",
                                     default_text="the checkpoint's validation split")
    calib_method: str = option(DEFAULT_CALIBRATION_METHOD, "int8: percentile or minmax.")
    calib_images: int = option(CALIB_IMAGES, "int8: at most this many calibration images.")
    parity: bool = option(True, "Check the artifact against the checkpoint.")
    parity_data: Path | None = option(None, "Parity images: dataset root or image folder.",
                                      default_text="the checkpoint's validation split")
    parity_images: int = option(PARITY_IMAGES, "Parity: at most this many images.")
    thresholds: ParityThresholds | None = None
    out_dir: Path | None = option(None, "Output folder.", names=("--out",), default_text="RUN/export, or beside the checkpoint")
    workspace_gib: float = option(4.0, "TensorRT builder workspace limit, GiB.", names=("--workspace-gib",),
                                  aliases=("--workspace",))
    device: str | torch.device = option("auto", DEVICE, help=DEVICE.help + " Engines need a GPU.")
    reuse: bool = False
    keep: bool = False
    triton_backend: str = option("onnxruntime", "--format triton: onnxruntime (model.onnx) or tensorrt (model.plan "
                                                "built here: needs TensorRT).")
    io: str = option("tensors", "tensors: normalised float NCHW in, logits (or --head argmax) out; frames: "
                                "pre/post-processing inside the graph: uint8 BGR NHWC frames in, uint8 class map at "
                                "the frame's size out.")
    source_size: tuple[int, int] | None = option(None, "--io frames: the frames' WxH.",
                                                 parse=functools.partial(parse_size, option="--source-size"),
                                                 default_text="the model input size; --dynamic: any size")
    confidence: bool = option(False, "--io frames: a second output, uint8 confidence (max softmax x 255).")
    dla_core: int | None = option(None, "Engines: run the layers DLA supports on this DLA core of a Jetson (AGX Orin: "
                                        "0 or 1), the rest on the GPU; fp16/int8, fixed shapes, TensorRT 8.6, 10.x "
                                        "or 11.4.1+.", default_text="the GPU only")
    builder_opt_level: int | None = option(None, "Engines: TensorRT builder optimisation level 0..5 (higher builds "
                                                 "longer, may run faster).", default_text="TensorRT's, 3")
    min_shape: tuple[int, int, int] | None = option(None, SHAPE_HELP.format("smallest", "min"), parse=parse_shape,
                                                    default_text="1 x 64 x 64 (smaller model inputs: theirs)")
    opt_shape: tuple[int, int, int] | None = option(None, SHAPE_HELP.format("tuned-for", "opt"), parse=parse_shape,
                                                    default_text="--batch x the model input")
    max_shape: tuple[int, int, int] | None = option(None, SHAPE_HELP.format("largest", "max"), parse=parse_shape,
                                                    default_text="max(--batch, 4) x the model input; frames: at least 1920x1080")
    timing_cache: Path | None = option(None, "Engines: TensorRT timing cache to read and update (trtexec "
                                             "--timingCacheFile); builds on the same GPU and TensorRT reuse its timings.",
                                       metavar="FILE", default_text="~/.cache/dronseg-edge/tensorrt/, per GPU and version")
    dynamic_batch: bool = option(False, "A free batch axis at the fixed size (--format triton implies it; --dynamic "
                                        "frees the batch too).")
    trt_verbose: bool = option(False, "Engines: log the TensorRT build at VERBOSE severity (trtexec --verbose).")

    def __post_init__(self) -> None:
        # Normalised here so that equal options compare equal (a list size, a str path, a numpy int).
        for convert, names, optional in _NORMALISE:
            for name in names:
                if not optional or getattr(self, name) is not None:
                    try:
                        object.__setattr__(self, name, convert(getattr(self, name)))
                    except (TypeError, ValueError):  # 2.5 is not taken as 2, nor "4GB" as a number
                        what = {_int: "a whole number", float: "a number", Path: "a path"}.get(convert)
                        if what is None:  # the size and shape parsers say their own
                            raise
                        raise DronsegError(f"--{name.replace('_', '-')} {getattr(self, name)!r} must be {what}"
                                           ) from None
        if self.thresholds is not None and not hasattr(self.thresholds, "min_agreement"):  # 0.99: AttributeError later
            raise DronsegError(f"thresholds={self.thresholds!r}: give a ParityThresholds (or None: the precision's)")
        # One spelling per graph: --dynamic frees the batch too, and a Triton model always batches.
        object.__setattr__(self, "dynamic_batch", not self.dynamic and (self.dynamic_batch or self.fmt == "triton"))
        self._validate()

    def _validate(self) -> None:
        one_of(self.fmt, "--format", FORMATS, " (the command line's `all` is onnx, then engine: export each)")
        one_of(self.precision, "--precision", EXPORT_PRECISIONS, " for an export")
        one_of(self.triton_backend, "--triton-backend", TRITON_BACKENDS)
        one_of(self.head, "--head", HEADS)
        one_of(self.io, "--io", IO_MODES)
        if self.precision == "int8":  # only int8 calibrates: a method given with fp32/fp16 is unused (the CLI passes one)
            one_of(self.calib_method, "--calib-method", CALIBRATION_METHODS)
        for flag, value in (("--batch", self.batch), ("--calib-images", self.calib_images),
                            ("--parity-images", self.parity_images)):
            whole(value, flag)
        if not 0 < self.workspace_gib <= MAX_WORKSPACE_GIB:  # inf: an OverflowError after the export, as bytes
            raise DronsegError(f"--workspace-gib {self.workspace_gib:g} must be a positive number of GiB, at most "
                               f"{MAX_WORKSPACE_GIB} (more than any GPU's memory)")
        self._validate_io()
        self._validate_engine()

    def _validate_engine(self) -> None:
        """TensorRT builder options. The engine's own format is checked when ``fmt == 'engine'``: the
        ONNX step of an engine export (and the onnx half of ``--format all``) carries them unused."""
        if self.builder_opt_level is not None:  # TensorRT's levels 0..5
            whole(self.builder_opt_level, "--builder-opt-level", 0, " (higher: longer builds, maybe faster engines; "
                  "TensorRT's default is 3)", 5)
        self._validate_profile()
        if self.timing_cache is not None and self.timing_cache.is_dir():
            raise DronsegError(f"--timing-cache {self.timing_cache} is a folder: give a file name, e.g. "
                               f"{self.timing_cache / 'timing.cache'}")
        if self.dla_core is None:
            return
        whole(self.dla_core, "--dla-core", 0, " (Jetson AGX Orin has DLA cores 0 and 1)")
        if self.fmt == "triton":
            raise DronsegError("--dla-core with --format triton is not supported: build the engine with "
                               "--format engine --dla-core N and serve it yourself")
        if self.fmt == "engine" and self.precision not in DLA_PRECISIONS:
            raise DronsegError(f"--dla-core with --precision {self.precision}: DLA runs fp16 or int8 only; "
                               "pass --precision fp16 (or int8)")
        if self.dynamic or self.dynamic_batch:
            given = "--dynamic" if self.dynamic else "a dynamic batch"
            raise DronsegError(f"--dla-core with {given}: DLA takes fixed shapes only; drop it "
                               "(and pass --batch/--size for the shape the engine runs at)")

    def _validate_io(self) -> None:
        if self.io == "tensors":
            for flag, given in (("--source-size", self.source_size is not None), ("--confidence", self.confidence)):
                if given:
                    raise DronsegError(f"{flag} needs --io frames (pre/post-processing inside the graph); "
                                       "drop it for a --io tensors export")
            return
        if self.source_size is not None and self.dynamic:
            raise DronsegError(f"--source-size {self.source_size[0]}x{self.source_size[1]} fixes the frame size but --dynamic "
                               "takes any: pass one of them")
        if self.head != "logits":
            raise DronsegError(f"--head {self.head} with --io frames: a frames graph always ends in the class map "
                               "(argmax inside it); drop --head")

    def _validate_profile(self) -> None:
        """--min/--opt/--max-shape: for --dynamic engines, each side of min <= opt <= max where both are
        given (the defaults, which depend on the model, are filled in and checked by export/tensorrt.py)."""
        given = {name: getattr(self, name) for name in ("min_shape", "opt_shape", "max_shape") if getattr(self, name)}
        if given and not self.dynamic:
            raise DronsegError(f"--{next(iter(given)).replace('_', '-')} shapes the profile of a --dynamic engine; a "
                               "static engine has one shape: add --dynamic, or set it with --batch and --size")
        names = list(given)
        for low, high in zip(names, names[1:]):
            if any(a > b for a, b in zip(given[low], given[high])):
                raise DronsegError(f"--{low.replace('_', '-')} {'x'.join(map(str, given[low]))} is larger than "
                                   f"--{high.replace('_', '-')} {'x'.join(map(str, given[high]))} on some side: each of batch, "
                                   "width and height must grow from --min-shape to --opt-shape to --max-shape")
