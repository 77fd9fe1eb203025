"""The interface every backend (PyTorch, ONNX Runtime, TensorRT) implements.

Lifecycle borrowed from Polygraphy: construct (no side effects: checks the options, opens no
file), ``info`` (the artifact's metadata, read on first access: ONNX props, engine sidecar or
checkpoint keys, never the weights onto a device), ``activate()`` (load onto the device),
``infer()`` any number of times, ``deactivate()``; or use it as a context manager. The input
contract (shape against ``info``) is checked here, once for every backend. Heavy imports
(onnxruntime, tensorrt) happen inside the backend modules only.

Two kinds of array go in and come back: numpy arrays in host memory (the deployable path, which
never imports torch: ONNX Runtime and TensorRT take them directly) and torch tensors (checkpoints,
export, parity, and GPU pre/post-processing with torch). A backend returns the kind it was given.
This module imports torch only when handed a torch tensor.
"""

from __future__ import annotations

import contextlib
import functools
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dronseg_edge.devices import as_torch_device
from dronseg_edge.errors import DronsegError
from dronseg_edge.metadata import ModelInfo

if TYPE_CHECKING:
    import torch

    from dronseg_edge.runtime.staging import HostStaging


def is_torch_tensor(array: Any) -> bool:
    """True for a torch tensor, told without importing torch."""
    return type(array).__module__.split(".")[0] == "torch"


def dtype_name(array: Any) -> str:
    """'uint8', 'float32', ... for a numpy array or a torch tensor."""
    return str(array.dtype).replace("torch.", "")


class Backend(ABC):
    """Runs one model artifact.

    ``infer`` takes a float32 batch (N, 3, H, W), already normalised, at ``info.input_size``
    (H, W = height, width): a numpy array in host memory, or a torch tensor on ``self.device``. It
    returns the same kind (numpy on the host; torch on ``self.device``): logits (N, C, H, W)
    float32 when ``info.head == 'logits'``, else an (N, H, W) class map. A frames artifact
    (``info.io == 'frames'``) takes (N, H, W, 3) uint8 frames and returns the (N, H, W) uint8 map.
    ``device`` is a ``torch.device`` or a torch-free ``devices.Device``: only ``.type`` and
    ``.index`` are used outside the torch backend.
    """

    name: str = "backend"
    OPTIONS: frozenset[str] = frozenset()  # constructor keywords after (path, device): what bench may pass

    def __init__(self, path: Path, device):
        self.path = Path(path)
        self.device = device
        self.provider: str = ""  # what actually runs it, e.g. "CUDAExecutionProvider" or "cuda fp16 + CUDA graph"
        self.last_inference_ms: float = float("nan")
        self.active = False

    @functools.cached_property
    def info(self) -> ModelInfo:
        """The artifact's metadata, read once on first access (DronsegError for a bad or foreign file)."""
        return self.read_info()

    @abstractmethod
    def read_info(self) -> ModelInfo:
        """Read the artifact's metadata without loading it onto the device (called once, by ``info``)."""

    @abstractmethod
    def activate(self) -> None:
        """Load the model onto ``self.device``; set ``self.provider``."""

    @abstractmethod
    def _infer(self, batch):
        """Run one batch, numpy or torch (see the class docstring for shapes); return the same kind."""

    def deactivate(self) -> None:
        self.active = False

    def infer(self, batch):
        self.check_input(batch)
        if not self.active:
            self.activate()
            self.active = True
        start = time.perf_counter()
        with _inference_mode(batch):
            out = self._infer(batch)
        self.last_inference_ms = (time.perf_counter() - start) * 1e3
        return out

    def check_input(self, batch) -> None:
        """DronsegError unless ``batch`` is (N, 3, H, W) and, for a static artifact, of its exported shape.

        Checked before the backend sees it: a runtime's own error for a wrong shape (ONNX Runtime's
        INVALID_ARGUMENT, TensorRT's refused binding) names neither the file nor the fix.
        """
        if self.info.io == "frames":
            return self._check_frames(batch)
        width, height = self.info.input_size
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise DronsegError(f"{self.path.name} takes (N, 3, H, W) batches, got {tuple(batch.shape)}")
        if not self.info.dynamic and (tuple(batch.shape[2:]) != (height, width) or
                                      (self.info.batch and batch.shape[0] != self.info.batch)):
            raise DronsegError(
                f"{self.path.name} was exported for {self.info.batch or 'N'}x3x{height}x{width} inputs, got "
                f"{'x'.join(map(str, batch.shape))}: re-export with --size/--batch to match, or with --dynamic"
            )

    def _check_frames(self, batch) -> None:
        """A frames artifact (pre/post-processing inside, export --io frames): (N, H, W, 3) uint8 frames."""
        if batch.ndim != 4 or batch.shape[3] != 3 or dtype_name(batch) != "uint8":
            raise DronsegError(f"{self.path.name} takes (N, H, W, 3) uint8 {self.info.color_order} frames, got "
                               f"{tuple(batch.shape)} {dtype_name(batch)}")
        if self.info.dynamic or self.info.source_size is None:
            return
        width, height = self.info.source_size
        if tuple(batch.shape[1:3]) != (height, width) or (self.info.batch and batch.shape[0] != self.info.batch):
            raise DronsegError(
                f"{self.path.name} was exported for {self.info.batch or 'N'}x{height}x{width}x3 frames, got "
                f"{'x'.join(map(str, batch.shape))}: re-export with --source-size/--batch to match, or with --dynamic"
            )

    def __enter__(self) -> "Backend":
        if not self.active:
            self.activate()
            self.active = True
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def describe(self) -> str:
        return f"{self.name} ({self.provider or self.device})"


# What to do when a file's metadata does not describe its own graph (a lie about classes, batch, size or io).
META_FIX = ("the metadata was edited or belongs to another model: re-export it with `dronseg-edge export CHECKPOINT` "
            "(or pass the --meta file made with this model)")


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output as its runtime declares it: numpy dtype name ('' when unknown) and shape,
    None for each dimension the graph leaves open (a dynamic axis)."""

    name: str
    dtype: str
    shape: tuple


def check_declared_io(path: Path, info: ModelInfo, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> None:
    """DronsegError unless the graph's declared input and outputs are what ``info`` says: one input,
    (N, 3, H, W) float for tensors io or (N, H, W, 3) uint8 for frames, its fixed dimensions those of
    ``batch``/``input_size``/``source_size`` (a dynamic one when ``info.dynamic``), the ``outputs`` named,
    and for logits as many channels as ``class_names``. Called at activation, so a lying file is one line
    naming it, not the runtime's INVALID_ARGUMENT mid-run or a run with class indices past the palette."""
    def lie(claim: str, actual: str) -> DronsegError:
        return DronsegError(f"{path}: its metadata says {claim}, but the model {actual}: {META_FIX}")

    if len(inputs) != 1:
        raise lie("one image input", f"has inputs {[i.name for i in inputs]}")
    x = inputs[0]
    frames = info.io == "frames"
    wanted = ("uint8",) if frames else ("float32", "float16")
    if x.dtype and x.dtype not in wanted or len(x.shape) != 4:
        layout = "(N, H, W, 3) uint8 frames" if frames else "(N, 3, H, W) float tensors"
        raise lie(f"io {info.io}: {layout}", f"takes {x.dtype or '?'} of shape {_dims(x.shape)}")
    n, h, w, c = x.shape if frames else (x.shape[0], x.shape[2], x.shape[3], x.shape[1])
    if c not in (None, 3):
        raise lie("3 colour channels", f"takes {c}")
    size = info.source_size if frames else info.input_size
    if info.dynamic and any(d is not None for d in (n, h, w)):
        raise lie("any batch and size (dynamic)", f"takes fixed {_dims(x.shape)}")
    wrong = bool(info.batch) and n is not None and n != info.batch
    if size is not None:
        wrong = wrong or (h is not None and h != size[1]) or (w is not None and w != size[0])
    if not info.dynamic and wrong:
        claim = f"batch {info.batch or 'N'} at {size[0]}x{size[1]} (width x height)" if size else f"batch {info.batch}"
        raise lie(claim, f"takes {_dims(x.shape)}")
    missing = [name for name in info.outputs if name not in [o.name for o in outputs]]
    if not outputs or missing:
        raise lie(f"outputs {info.outputs}", f"has {[o.name for o in outputs]}")
    y = outputs[0]
    logits = not frames and info.head == "logits"
    if len(y.shape) != (4 if logits else 3):
        what = "(N, C, H, W) logits" if logits else "an (N, H, W) class map"
        raise lie(f"head {info.head}, io {info.io}: {what}", f"outputs {_dims(y.shape)}")
    if logits and y.shape[1] is not None and y.shape[1] != info.num_classes:
        raise lie(f"{info.num_classes} classes (class_names)", f"output {y.name} has {y.shape[1]} channels")


def _dims(shape: tuple) -> str:
    return "x".join("?" if d is None else str(d) for d in shape) or "a scalar"


def _inference_mode(batch):
    """torch.inference_mode() for a torch batch, whatever the caller's mode: a backend's fixed
    buffers (CUDA-graph inputs) are made on its first call, and an inference tensor made under a
    Segmenter cannot be written outside inference mode, nor a normal one inside it without
    autograd bookkeeping. Nothing for numpy."""
    if not is_torch_tensor(batch):
        return contextlib.nullcontext()
    import torch

    return torch.inference_mode()


def preprocess(frames_bgr: "np.ndarray | torch.Tensor", info: ModelInfo, device: "torch.device",
               staging: "HostStaging | None" = None, antialias: bool = False) -> "torch.Tensor":
    """uint8 BGR frames (N, H, W, 3) or one frame (H, W, 3) -> normalised float32 (N, 3, h, w) on ``device``.

    Colour conversion, resizing (bilinear) to ``info.input_size`` and normalisation run on ``device``,
    so only uint8 bytes cross the bus. Host frames go through ``staging`` (pinned buffers, an
    asynchronous copy) when given; without it a copy to a GPU blocks the host until it is done.
    ``antialias``: filter when shrinking, as training's cv2.INTER_AREA did and as a frames graph
    (export --io frames) does inside; off by default (the pipeline's historical behaviour).
    The torch form; ``runtime/host.py`` has the numpy one.
    """
    import torch
    import torch.nn.functional as F

    device = as_torch_device(device)  # a backend's torch-free devices.Device too
    frames = torch.as_tensor(frames_bgr)
    if frames.ndim == 3:
        frames = frames.unsqueeze(0)
    if staging is not None and frames.device.type == "cpu":
        frames = staging.upload(frames)
    x = frames.to(device, non_blocking=True).permute(0, 3, 1, 2).flip(1).float().div_(255.0)
    width, height = info.input_size
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=antialias)
    mean, std = _normalisation(tuple(info.mean), tuple(info.std), x.device)
    return x.sub_(mean).div_(std).contiguous()


@functools.lru_cache(maxsize=16)
def _normalisation(mean: tuple, std: tuple, device: "torch.device") -> "tuple[torch.Tensor, torch.Tensor]":
    # Cached: building these tensors on a GPU every frame is a host-to-device copy that stalls the stream.
    import torch

    return (torch.tensor(mean, device=device).view(1, 3, 1, 1), torch.tensor(std, device=device).view(1, 3, 1, 1))
