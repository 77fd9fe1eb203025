"""What `bench` is asked to measure: :class:`TimingSettings` (how long) and :class:`BenchOptions`
(which models, where, at what shape); each field with help text is its command-line option
(option_fields.py), validated here, once. Light: the CLI reads them for --help without numpy or torch."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List

from dronseg_edge.devices import DEVICE
from dronseg_edge.errors import DronsegError
from dronseg_edge.metadata import META
from dronseg_edge.option_fields import number, option, whole
from dronseg_edge.sizes import parse_size

DEFAULT_MIN_ITERS = 20  # with neither --iters nor --duration-s: at least 20 iterations and 3 s (trtexec: 10 and 3 s)
DEFAULT_MIN_SECONDS = 3.0


@dataclass(frozen=True)
class TimingSettings:
    """How long to warm up and measure.

    Warm-up runs ``warmup_iters`` calls when given, else for ``warmup_s`` seconds; at least one
    untimed call always runs (it allocates the output buffers). Measurement runs exactly ``iters``
    iterations, or for ``duration_s`` seconds, or, with both, until both are reached.
    """

    warmup_s: float = option(1.0, "Warm-up seconds before measuring.")
    warmup_iters: int | None = option(None, "Warm-up call count (overrides --warmup-s).", default_text="by --warmup-s")
    iters: int | None = option(None, "Measured iterations.", default_text=f">= {DEFAULT_MIN_ITERS} and >= "
                                                                         f"{DEFAULT_MIN_SECONDS:g} s")
    duration_s: float | None = option(None, "Measure for this many seconds.", default_text="by --iters")
    include_transfers: bool = option(False, "Count host<->device copies in the latency (GPU; always counted without "
                                            "a CUDA torch).")

    def __post_init__(self) -> None:
        for name in ("warmup_s", "duration_s"):  # "2" (a YAML value): a TypeError; True was taken as 1 s
            if name == "warmup_s" or self.duration_s is not None:
                object.__setattr__(self, name, number(getattr(self, name), "--" + name.replace("_", "-")))
        if not math.isfinite(self.warmup_s) or self.warmup_s < 0:
            raise DronsegError(f"--warmup-s {self.warmup_s} must be 0 or more seconds")
        if self.warmup_iters is not None:
            whole(self.warmup_iters, "--warmup-iters", least=0)
        if self.iters is not None:  # "runs exactly iters": 2.5 is not taken as 2
            whole(self.iters, "--iters", hint=" (or use --duration-s SECONDS)")
        if self.duration_s is not None and (not math.isfinite(self.duration_s) or self.duration_s <= 0):
            raise DronsegError(f"--duration-s {self.duration_s} must be more than 0 seconds")

    def bounds(self) -> tuple[int, float]:
        """(minimum iterations, minimum seconds) of the measurement loop."""
        if self.iters is None and self.duration_s is None:
            return DEFAULT_MIN_ITERS, DEFAULT_MIN_SECONDS
        return (self.iters or 1), (self.duration_s or 0.0)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), **dict(zip(("min_iters", "min_seconds"), self.bounds()))}


def require_checkpoint(path: Path) -> None:
    """--matrix exports every variant from a training checkpoint."""
    from dronseg_edge.runtime.registry import is_checkpoint

    if not is_checkpoint(path):
        raise DronsegError(f"--matrix needs a training checkpoint (.pt), not {path}: export starts from the checkpoint")


@dataclass(frozen=True)
class BenchOptions:
    """The models to measure and how; ``size`` (W, H) for dynamic models; ``matrix``: export every
    format and precision of one checkpoint and measure each (``out`` and ``data`` are its)."""

    models: tuple[Path, ...] = option(
        (), "Model files: .pt checkpoint, .onnx, .engine (one or more).", argument=True, type=List[Path], parse=tuple,
        metavar="MODEL")
    size: tuple[int, int] | None = option(None, "Input WxH (dynamic models only).", parse=parse_size,
                                          default_text="the model's own")
    batch: int = option(1, "Frames per inference call.")
    device: str = option("auto", DEVICE)
    precision: str | None = option(None, "Checkpoints only: fp32, fp16 or bf16 (GPU).", default_text="fp32")
    cuda_graph: bool | None = option(None, "Capture a CUDA graph where the backend supports it.",
                                     default_text="on CUDA for checkpoints")
    matrix: bool = option(False, "Export every format/precision this machine runs; parity + latency.")
    out: Path | None = option(None, "--matrix: folder for exported files.", default_text="where `export` writes")
    data: Path | None = option(None, "--matrix: dataset root for parity/calibration images and for each row's "
                                     "mIoU/competition Dice.", default_text="the checkpoint's data set and validation split")
    meta: Path | None = option(None, META)

    def __post_init__(self) -> None:
        whole(self.batch, "--batch")  # "2": a TypeError; 2.5 was refused only once the model was loaded
        if self.matrix:
            if len(self.models) != 1:
                raise DronsegError(f"--matrix takes one checkpoint, got {len(self.models)} files: pass a single .pt")
            require_checkpoint(self.models[0])  # before --device imports torch: an .onnx is a usage error
            for flag, value in (("--precision", self.precision), ("--cuda-graph/--no-cuda-graph", self.cuda_graph)):
                if value is not None:
                    raise DronsegError(f"{flag} does not apply to --matrix (it runs every precision, with and "
                                       "without CUDA graphs): drop it")
        elif self.out is not None or self.data is not None:
            raise DronsegError("--out and --data belong to --matrix: add --matrix or drop them")
        if self.meta is not None and (self.matrix or len(self.models) != 1):
            raise DronsegError("--meta describes one .onnx or .engine file: bench that file alone, without --matrix")
