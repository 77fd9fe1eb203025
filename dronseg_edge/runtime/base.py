"""The interface every backend (PyTorch, ONNX Runtime, TensorRT) implements: the one frame path.

Lifecycle borrowed from Polygraphy: construct (checks the options, opens no file), ``info`` (the
artifact's metadata, read on first access, never the weights), ``activate()`` (load onto the
device), ``segment()`` / ``infer()`` any number of times, ``deactivate()``; or a context manager.
Heavy imports (onnxruntime, tensorrt) happen inside the backend modules only.

- ``segment(frames)``: the pipeline's frame contract (docs/architecture.md, "One frame path"); this
  class's default is the host pre/post (``runtime/host.py``) for plain tensor artifacts.
- ``infer(batch)``: the artifact's own tensors, for export parity, accuracy and ``bench``; each
  backend runs one kind of array (``native``), the other is converted here, at the edge, as
  Polygraphy's runners do. This module imports torch only when handed a torch tensor.
"""

from __future__ import annotations

import functools
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dronseg_edge.errors import BackendFailure, DronsegError
from dronseg_edge.metadata import ModelInfo
from dronseg_edge.runtime import host


STAGES = ("preprocess", "inference", "postprocess")  # what FrameOutputs.stage_ms times


def is_torch_tensor(array: Any) -> bool:
    """True for a torch tensor, told without importing torch."""
    return type(array).__module__.split(".")[0] == "torch"


def dtype_name(array: Any) -> str:
    """'uint8', 'float32', ... for a numpy array or a torch tensor."""
    return str(array.dtype).replace("torch.", "")


def pad_batch(batch, size: int) -> tuple:
    """Pad ``batch`` (N, ...) to ``size`` rows by repeating its last row; returns (padded, N).

    The caller keeps the first N rows of the output. Repeating a real frame (not zeros) keeps the
    padding's activations in the range the model was calibrated for. A batch of ``size`` or more
    rows is returned unchanged. A numpy array or a torch tensor (torch imported only for one).
    """
    real = int(batch.shape[0])
    if real == 0:
        raise ValueError("pad_batch needs at least one row to repeat")
    if real >= size:
        return batch, real
    if not is_torch_tensor(batch):
        return np.concatenate([batch, np.repeat(batch[-1:], size - real, axis=0)]), real
    import torch

    return torch.cat([batch, batch[-1:].expand(size - real, *batch.shape[1:])]), real


@dataclass
class FrameOutputs:
    """What ``Backend.segment`` returns for N frames of one size (H, W).

    ``classes``: (N, H, W) uint8 class ids; ``confidence``: (N, H, W) uint8 maximum class probability
    x 255 when asked for, else None; ``logits``: (N, C, h, w) float32 at the model's input size when
    asked for (tiling blends them), else None; ``stage_ms``: milliseconds of the whole call per stage
    (preprocess, inference, postprocess).
    """

    classes: np.ndarray
    confidence: np.ndarray | None = None
    logits: np.ndarray | None = None
    stage_ms: dict[str, float] = field(default_factory=dict)


class Backend(ABC):
    """Runs one model artifact (see the module docstring for its two calls).

    ``infer`` takes a float32 batch (N, 3, H, W), already normalised, at ``info.input_size`` and
    returns logits (N, C, H, W) float32 when ``info.head == 'logits'``, else an (N, H, W) class map;
    a frames artifact (``info.io == 'frames'``) takes (N, H, W, 3) uint8 frames and returns the
    (N, H, W) uint8 map. ``device`` is a ``torch.device`` or a torch-free ``devices.Device``: only
    ``.type`` and ``.index`` are used outside the torch backend.
    """

    name: str = "backend"
    native: str = "numpy"  # the array kind ``_infer`` takes and returns: "numpy" or "torch"
    # ``segment`` calls that may run at once from different threads once active (Segmenter.stream keeps
    # this many batches in flight): 1 where a call owns device state (a CUDA graph, an execution context).
    concurrent_calls: int = 1
    OPTIONS: frozenset[str] = frozenset()  # constructor keywords after (path, device): what bench may pass

    def __init__(self, path: Path, device):
        self.path = Path(path)
        self.device = device
        self.provider: str = ""  # what actually runs it, e.g. "CUDAExecutionProvider" or "cuda fp16 + CUDA graph"
        self._last = threading.local()  # per calling thread: concurrent calls each see their own
        self.active = False

    @property
    def last_outputs(self) -> dict[str, Any]:
        """Every output of this thread's last call by name (a frames graph's confidence)."""
        return getattr(self._last, "outputs", {})

    @last_outputs.setter
    def last_outputs(self, outputs: dict[str, Any]) -> None:
        self._last.outputs = outputs

    @functools.cached_property
    def info(self) -> ModelInfo:
        """The artifact's metadata, read once on first access (DronsegError for a bad or foreign file)."""
        return self.read_info()

    @abstractmethod
    def read_info(self) -> ModelInfo:
        """Read the artifact's metadata without loading it onto the device (called once, by ``info``)."""

    @abstractmethod
    def activate(self) -> None:
        """Load the model onto ``self.device``; set ``self.provider`` and then ``self.active`` (a later call must not load it again)."""

    @abstractmethod
    def _infer(self, batch):
        """Run one batch of the ``native`` kind (see the class docstring for shapes); return the same kind."""

    def deactivate(self) -> None:
        self.active = False

    def infer(self, batch):
        """The artifact's own tensors in and out, numpy or torch (converted at the edge to ``native``)."""
        self.check_input(batch)
        self._ensure_active()
        out = self._infer_converted(batch)
        # A class map's classes cannot be counted at activation as logits' channels are (check_declared_io).
        if (self.info.head == "argmax" or self.info.io == "frames") and int(out.max()) >= self.info.num_classes:
            raise DronsegError(f"{self.path}: its metadata says {self.info.num_classes} classes (class_names), but the "
                               f"model output class {int(out.max())}: {META_FIX}")
        return out

    def _infer_converted(self, batch):
        given_torch = is_torch_tensor(batch)
        try:
            if not given_torch and self.native == "numpy":
                return self._infer(batch)
            import torch

            # Whatever the caller's mode: a backend's fixed buffers (CUDA-graph inputs) are made on its first
            # call, and an inference tensor made under a Segmenter cannot be written outside inference mode.
            with torch.inference_mode():
                if not given_torch:  # the torch backend given numpy: a numpy array back
                    return self._infer(torch.from_numpy(np.ascontiguousarray(batch))).cpu().numpy()
                if self.native == "numpy":  # through host memory, back onto the caller's device
                    return torch.from_numpy(np.ascontiguousarray(self._infer(batch.detach().cpu().numpy()))).to(batch.device)
                return self._infer(batch)
        except self.runtime_errors() as exc:  # the runtime failed while it ran the model, not a bug here
            raise BackendFailure(self.name, exc) from exc

    def runtime_errors(self) -> tuple[type[BaseException], ...]:
        """The exception types this backend's runtime raises when it fails (a CUDA error, out of memory);
        ``infer`` raises them as BackendFailure. Python's own (TypeError, ValueError, ...) stay bugs."""
        return (RuntimeError, MemoryError)

    def segment(self, frames: np.ndarray, confidence: bool = False, logits: bool = False,
                pad_to: int = 1) -> FrameOutputs:
        """uint8 BGR frames (N, H, W, 3) of one size -> :class:`FrameOutputs` at that size.

        ``confidence``: also the maximum-probability map; ``logits``: also the model-size logits (a
        plain tensor artifact with a logits head only). ``pad_to``: run at least this many rows (a
        fixed-batch artifact always runs its own batch): one shape keeps one CUDA graph or binding.
        Here a frames artifact gets the frames in its colour order (and gives its ``confidence`` output whenever it
        has one: the graph makes it anyway); any other gets the host pre/post (``runtime/host.py``).
        """
        self.check_frames(frames)
        self._ensure_active()
        rows = self.info.batch if self.info.batch and not self.info.dynamic else int(pad_to)
        marks = [time.perf_counter()]  # a stage ends at each mark: STAGES
        if self.info.io == "frames":
            batch, real = pad_batch(host.frames_in_order(frames, self.info), rows)
            marks.append(time.perf_counter())
            classes, kept = np.asarray(self.infer(batch)[:real], np.uint8), None
            conf = self.last_outputs.get(host.CONFIDENCE_OUTPUT)
            conf = None if conf is None else np.asarray(conf[:real], np.uint8)
            if classes.shape[1:] != frames.shape[1:3]:  # a graph from elsewhere: nearest to the frame, as eval scores it
                classes, conf = (None if maps is None else np.stack([host.class_map_host(m, *frames.shape[1:3]) for m in maps])
                                 for maps in (classes, conf))
        else:
            batch, real = pad_batch(host.preprocess_host(frames, self.info), rows)
            marks.append(time.perf_counter())
            out = np.asarray(self.infer(batch)[:real])
            marks.append(time.perf_counter())
            classes, conf = host.postprocess_host(out, frames.shape[1], frames.shape[2], confidence)
            kept = out.astype(np.float32, copy=False) if logits and out.ndim == 4 else None
            if kept is not None and kept.shape[2:] != batch.shape[2:]:  # a graph from elsewhere: bilinear, as eval
                kept = np.stack([[cv2.resize(plane, batch.shape[:1:-1]) for plane in one] for one in kept])
        marks.append(time.perf_counter())
        stage_ms = {stage: (end - start) * 1e3 for stage, start, end in zip(STAGES, marks, marks[1:])}
        return FrameOutputs(classes, conf, kept, stage_ms)

    def check_frames(self, frames) -> None:
        """DronsegError unless ``frames`` is a numpy (N, H, W, 3) uint8 array with N, H, W >= 1."""
        if not isinstance(frames, np.ndarray) or frames.ndim != 4 or frames.shape[3] != 3 \
                or frames.dtype != np.uint8 or 0 in frames.shape:
            raise DronsegError(f"{self.path.name}: segment() takes (N, H, W, 3) uint8 BGR frames as numpy, got "
                               f"{type(frames).__name__} {tuple(getattr(frames, 'shape', ()))} "
                               f"{dtype_name(frames) if hasattr(frames, 'dtype') else ''}".rstrip())

    def _ensure_active(self) -> None:
        if not self.active:
            self.activate()
            self.active = True

    def check_input(self, batch) -> None:
        """DronsegError unless ``batch`` is (N, 3, H, W) (a frames artifact: (N, H, W, 3) uint8) and, for a
        static artifact, of its exported shape. Checked before the backend sees it: a runtime's own error
        for a wrong shape (ONNX Runtime's INVALID_ARGUMENT, TensorRT's refused binding) names neither the
        file nor the fix."""
        frames = self.info.io == "frames"
        if batch.ndim != 4 or batch.shape[3 if frames else 1] != 3 or (frames and dtype_name(batch) != "uint8"):
            layout = f"(N, H, W, 3) uint8 {self.info.color_order} frames" if frames else "(N, 3, H, W) batches"
            raise DronsegError(f"{self.path.name} takes {layout}, got {tuple(batch.shape)}"
                               + (f" {dtype_name(batch)}" if frames else ""))
        size = self.info.source_size if frames else self.info.input_size
        if self.info.dynamic or size is None:
            return
        width, height = size
        got_h, got_w = batch.shape[1:3] if frames else batch.shape[2:]
        wrong_batch = self.info.batch and batch.shape[0] != self.info.batch
        if (got_h, got_w) != (height, width) or wrong_batch:
            exported, flag = (f"{height}x{width}x3 frames", "--source-size") if frames else (f"3x{height}x{width} inputs", "--size")
            fix = [f"{flag} {got_w}x{got_h}"] * ((got_h, got_w) != (height, width)) + [f"--batch {batch.shape[0]}"] * bool(wrong_batch)
            raise DronsegError(f"{self.path.name} was exported for {self.info.batch or 'N'}x{exported}, got "  # options take WxH
                               f"{'x'.join(map(str, batch.shape))}: re-export with {' '.join(fix)} to match, or with --dynamic")

    def __enter__(self) -> "Backend":
        self._ensure_active()
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


def named_first(outputs: list, names: list[str], name=lambda o: o) -> list:
    """``outputs`` with those ``names`` lists (ModelInfo.outputs) first, in that order: the first is the one run
    and checked (a foreign graph's ``aux`` may come before its ``out``)."""
    return sorted(outputs, key=lambda o: names.index(name(o)) if name(o) in names else len(names))


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
    wrong = n is not None and n != info.batch  # batch None (any) on a fixed axis too: INVALID_ARGUMENT mid-run
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
