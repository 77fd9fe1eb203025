"""The options of one export, as one frozen value: defaults and validation live here and nowhere else.

The CLI builds an ``ExportOptions`` once; ``export_artifact`` and everything below it read that
object. A derived export (the ONNX graph an engine is built from) is ``dataclasses.replace(options,
...)``, which validates again, so no code path holds an unchecked combination.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dronseg_edge.errors import DronsegError
from dronseg_edge.export.parity_report import ParityThresholds
from dronseg_edge.metadata import HEADS, IO_MODES

FORMATS = ("onnx", "engine", "triton")  # triton: a Triton model repository around the ONNX file (or engine)
TRITON_BACKENDS = ("onnxruntime", "tensorrt")  # export.triton serves model.onnx or model.plan
EXPORT_PRECISIONS = ("fp32", "fp16", "int8")
CALIBRATION_METHODS = ("minmax", "percentile")  # export.quantize implements these (and imports them from here)
DEFAULT_CALIBRATION_METHOD = "percentile"
CALIB_IMAGES = 32
PARITY_IMAGES = 16
BUILDER_OPT_LEVELS = range(0, 6)  # TensorRT's builder optimisation levels 0..5 (TensorRT's default: 3)
DLA_PRECISIONS = ("fp16", "int8")  # DLA has no fp32 kernels


@dataclass(frozen=True)
class ExportOptions:
    """How to export a checkpoint; every field has the CLI's default. Invalid values raise DronsegError.

    ``size`` is (width, height) in pixels, None for the training size. ``batch`` is the fixed batch,
    or with ``dynamic``/``dynamic_batch`` the batch engines are tuned for. ``dynamic``: any batch, height
    and width; ``dynamic_batch``: any batch at the fixed size. ``fmt='triton'`` implies ``dynamic_batch``
    (unless ``dynamic``): Triton batches along a model's first dimension only when it is free. ``calib_*`` apply to int8 only. ``thresholds``
    None means the precision's defaults. ``out_dir`` None means ``RUN/export`` (or beside a bare
    checkpoint). ``triton_backend`` (``fmt='triton'`` only): ``onnxruntime`` serves the ONNX file,
    ``tensorrt`` an engine built here. ``reuse``: return an existing file of the same name made from the same checkpoint
    with the same options instead of exporting again (the engine path and ``bench --matrix`` use it).
    ``io='frames'``: pre- and post-processing inside the graph (export/embedded.py): uint8 BGR
    frames in at ``source_size`` (W, H; None: ``size``, or any size with ``dynamic``), the uint8
    class map at that size out, plus a uint8 confidence map with ``confidence``.
    ``dla_core`` (engines): build for that DLA core of a Jetson, with GPU fallback for the layers DLA
    lacks; ``builder_opt_level`` (engines): TensorRT's builder optimisation level 0..5, None for its
    default. Whether this machine has DLA is checked when the engine is built (export/tensorrt.py).
    """

    fmt: str = "onnx"
    precision: str = "fp32"
    size: tuple[int, int] | None = None
    batch: int = 1
    dynamic: bool = False
    opset: int | None = None
    head: str = "logits"
    calib_data: Path | None = None
    calib_method: str = DEFAULT_CALIBRATION_METHOD
    calib_images: int = CALIB_IMAGES
    parity: bool = True
    parity_data: Path | None = None
    parity_images: int = PARITY_IMAGES
    thresholds: ParityThresholds | None = None
    out_dir: Path | None = None
    workspace_gib: float = 4.0
    device: str | torch.device = "auto"
    reuse: bool = False
    triton_backend: str = "onnxruntime"
    io: str = "tensors"
    source_size: tuple[int, int] | None = None
    confidence: bool = False
    dla_core: int | None = None
    builder_opt_level: int | None = None
    dynamic_batch: bool = False

    def __post_init__(self) -> None:
        # Normalised here so that equal options compare equal (a list size, a str path, a numpy int).
        for name, convert in (("batch", int), ("calib_images", int), ("parity_images", int),
                              ("workspace_gib", float), ("dynamic", bool), ("parity", bool), ("reuse", bool),
                              ("confidence", bool), ("dynamic_batch", bool)):
            object.__setattr__(self, name, convert(getattr(self, name)))
        # One spelling per graph: --dynamic frees the batch too, and a Triton model always batches.
        object.__setattr__(self, "dynamic_batch", not self.dynamic and (self.dynamic_batch or self.fmt == "triton"))
        for name in ("calib_data", "parity_data", "out_dir"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        if self.size is not None:
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        if self.source_size is not None:
            object.__setattr__(self, "source_size", (int(self.source_size[0]), int(self.source_size[1])))
        for name in ("dla_core", "builder_opt_level"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, int(getattr(self, name)))
        self._validate()

    def _validate(self) -> None:
        if self.fmt not in FORMATS:
            raise DronsegError(f"--format {self.fmt!r} is not one of onnx, engine, all, triton")
        if self.triton_backend not in TRITON_BACKENDS:
            raise DronsegError(f"--triton-backend {self.triton_backend!r} is not one of {', '.join(TRITON_BACKENDS)}")
        if self.precision not in EXPORT_PRECISIONS:
            raise DronsegError(f"--precision {self.precision!r} is not one of {', '.join(EXPORT_PRECISIONS)} for an export")
        if self.head not in HEADS:
            raise DronsegError(f"--head {self.head!r} is not one of {', '.join(HEADS)}")
        if self.batch < 1:
            raise DronsegError(f"--batch {self.batch} must be 1 or more")
        if not self.workspace_gib > 0:
            raise DronsegError(f"--workspace {self.workspace_gib:g} must be a positive number of GiB")
        # Only int8 calibrates: a method given with fp32/fp16 is unused, as the CLI always passes one.
        if self.precision == "int8" and self.calib_method not in CALIBRATION_METHODS:
            raise DronsegError(f"--calib-method {self.calib_method!r} is not one of {', '.join(CALIBRATION_METHODS)}")
        for option, value in (("--calib-images", self.calib_images), ("--parity-images", self.parity_images)):
            if value < 1:
                raise DronsegError(f"{option} {value} must be 1 or more")
        self._validate_io()
        self._validate_engine()

    def _validate_engine(self) -> None:
        """TensorRT builder options. The engine's own format is checked when ``fmt == 'engine'``: the
        ONNX step of an engine export (and the onnx half of ``--format all``) carries them unused."""
        if self.builder_opt_level is not None and self.builder_opt_level not in BUILDER_OPT_LEVELS:
            raise DronsegError(f"--builder-opt-level {self.builder_opt_level} is not one of 0..5 "
                               "(higher: longer builds, maybe faster engines; TensorRT's default is 3)")
        if self.dla_core is None:
            return
        if self.dla_core < 0:
            raise DronsegError(f"--dla-core {self.dla_core} must be 0 or more (Jetson AGX Orin has DLA cores 0 and 1)")
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
        if self.io not in IO_MODES:
            raise DronsegError(f"--io {self.io!r} is not one of {', '.join(IO_MODES)}")
        if self.io == "tensors":
            for option, given in (("--source-size", self.source_size is not None), ("--confidence", self.confidence)):
                if given:
                    raise DronsegError(f"{option} needs --io frames (pre/post-processing inside the graph); "
                                       "drop it for a --io tensors export")
            return
        if self.source_size is not None and self.dynamic:
            raise DronsegError(f"--source-size {self.source_size[0]}x{self.source_size[1]} fixes the frame size but --dynamic "
                               "takes any: pass one of them")
        if self.source_size is not None and min(self.source_size) < 1:
            raise DronsegError(f"--source-size {self.source_size[0]}x{self.source_size[1]} must be positive, as WxH")
        if self.head != "logits":
            raise DronsegError(f"--head {self.head} with --io frames: a frames graph always ends in the class map "
                               "(argmax inside it); drop --head")
