"""The Python API: ``Segmenter(model).predict(frame)`` and ``Segmenter(model).stream(source)``.

Any artifact (checkpoint, ONNX, TensorRT engine) through ``runtime.registry.load_backend`` and its
own metadata. Every backend takes uint8 BGR frames and gives class maps at their size
(``Backend.segment``), so the Segmenter is batching and tiling over that one contract, plus what
each frame gets besides its class map (pipeline/request.py). ``tile=`` is off by default: a 720p
video with a 320x192 model would cost 25 windows a frame, and a model trained on shrunk whole
frames sees objects too large in full-resolution windows (pipeline/tiling.py, docs/tiling.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import groupby, islice
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import cv2
import numpy as np

from dronseg_edge.classes import class_counts
from dronseg_edge.devices import device_description
from dronseg_edge.errors import DronsegError
from dronseg_edge.option_fields import number, one_of, whole
from dronseg_edge.pipeline.reader import FrameReader
from dronseg_edge.pipeline.request import FrameRequest, select_classes
from dronseg_edge.pipeline.result import Result
from dronseg_edge.pipeline.source_spec import open_source
from dronseg_edge.pipeline.sources import FrameRecord, FramesSource, Source
from dronseg_edge.pipeline.tiling import DEFAULT_OVERLAP, TilePlan, segment_tiled, tiling_unable
from dronseg_edge.runtime.base import Backend
from dronseg_edge.runtime.host import CONFIDENCE_OUTPUT
from dronseg_edge.runtime.registry import backend_class, check_model_file, is_checkpoint, load_backend, resolve_device_for
from dronseg_edge.sizes import format_size, parse_size

log = logging.getLogger(__name__)

_OWN = object()  # stream() called without classes: the Segmenter's own apply
DEFAULT_TILE_BATCH = 4  # windows per call for dynamic-batch checkpoints and ONNX files (at least --batch)
__all__ = ["Result", "Segmenter"]  # Result lives in result.py; imported from here too


class Segmenter(contextlib.AbstractContextManager):
    """Segments frames with any model artifact; see the module docstring.

    ``model``: path to a .pt/.onnx/.engine file, or an already-built Backend (made with its own device,
    half, precision, size, cuda_graph, backend_options, meta and streaming: giving them is refused).
    ``device``: auto | cpu | cuda | cuda:N. ``half``: fp16 for checkpoints on a GPU (ignored with a warning on the CPU
    and for ONNX/engines, whose precision is fixed at export); ``precision`` overrides it (fp32 |
    fp16 | bf16). ``batch``: frames per inference call. ``size``: (W, H) model input for dynamic
    artifacts (checkpoints); default the artifact's own. ``cuda_graph``: checkpoints only, default on CUDA.
    ``backend_options``: passed to the backend's constructor (e.g. ``{"provider": "cuda"}`` for ONNX).
    ``tile``: auto | on | off (module docstring); ``tile_overlap``: share of a window its neighbour
    shares (0..0.75); ``tile_batch``: windows per inference call (default: a fixed-batch artifact's
    batch, a TensorRT engine's ``batch``, else at least 4). ``confidence``: results carry the (H, W)
    uint8 maximum class probability x 255 (it costs a softmax). ``classes``: class names or ids to keep
    (a list, "person,car" or "1,3"); the rest become 255 in masks and stay uncoloured in overlays.
    ``meta``: metadata FILE for an .onnx/.engine without its own (the ONNX an engine was built from,
    or a sidecar JSON; runtime/registry.read_meta_file). ``streaming``: tune the backend for
    ``stream()`` (``infer`` does): a CPU ONNX Runtime session then gives each of its calls in flight its
    share of the cores, ~1.1x faster on 2 cores; ``predict`` of one frame at a time is then slower
    (1.3x at 320x192), hence off by default.
    Not thread-safe: use one Segmenter per thread.
    """

    def __init__(self, model: str | Path | Backend, device="auto", half: bool = False, *,
                 precision: str | None = None, batch: int = 1, size: tuple[int, int] | None = None,
                 cuda_graph: bool | None = None, backend_options: dict | None = None, tile: str = "off",
                 tile_overlap: float = DEFAULT_OVERLAP, tile_batch: int | None = None, confidence: bool = False,
                 classes=None, meta: str | Path | None = None, streaming: bool = False):
        if isinstance(model, Backend):
            given = [f"{name}={value!r}" for name, value, default in (("device", device, "auto"), ("half", half, False),
                     ("precision", precision, None), ("streaming", streaming, False), ("cuda_graph", cuda_graph, None),
                     ("backend_options", backend_options or None, None), ("meta", meta, None)) if value != default]
            if given:  # silently ignored before
                raise DronsegError(f"{', '.join(given)}: a Backend passed in was made with its own; "
                                   "pass the model's path to choose")
            self.backend = model
        else:
            if not isinstance(model, (str, os.PathLike)):  # None: a TypeError from pathlib
                raise DronsegError(f"model: a {type(model).__name__} is not a model: give the path of a .pt, .onnx or "
                                   ".engine file, or a Backend")
            for name, value in (("half", half), ("streaming", streaming), ("cuda_graph", cuda_graph)):  # "no": not False
                one_of(value, name, (True, False) + (None,) * (name == "cuda_graph"))
            device = resolve_device_for(model, device)  # resolved once here: --half depends on it
            options = _backend_options(check_model_file(model), device, half, precision, cuda_graph, streaming)
            kind = backend_class(model)
            if unknown := sorted(set(backend_options or {}) - kind.OPTIONS):  # else a TypeError from inside
                raise DronsegError(f"backend_options {', '.join(map(str, unknown))}: {kind.name} (which runs "
                                   f"{Path(model).name}) takes {', '.join(sorted(kind.OPTIONS))}")
            self.backend = load_backend(model, device, meta=meta, **{**options, **(backend_options or {})})
            if half and options.get("precision") is None and self.backend.info.precision == "fp32":
                log.warning("--half does not change %s: its precision (fp32) was fixed at export; "
                            "export it with --precision fp16 instead", Path(model).name)
        self.device = self.backend.device
        self.info = self.backend.info
        batch = whole(batch, "--batch")
        fixed = self.info.batch if not self.info.dynamic else None
        if fixed is not None and batch > fixed:
            raise DronsegError(f"--batch {batch}: {self.backend.path.name} was exported for batch {fixed}; "
                               f"use --batch {fixed} or re-export it with --batch {batch} (or --dynamic)")
        self.batch = batch
        size = None if size is None else parse_size(size, "size")
        if size is not None and size != tuple(self.info.input_size):
            if not self.info.dynamic or self.info.io == "frames":  # a frames graph shrinks to its own size inside
                raise DronsegError(f"{self.backend.path.name} was exported for {format_size(self.info.input_size)}; "
                                   f"re-export it with --size {format_size(size)}"
                                   + ("" if self.info.io == "frames" else " (or --dynamic)"))
            if isinstance(model, Backend):  # the caller's, perhaps another Segmenter's too (a copy would share its GPU buffers)
                raise DronsegError(f"size={format_size(size)}: a Backend passed in runs at its own size "
                                   f"({format_size(self.info.input_size)}); pass the model's path to choose one")
            self.info.input_size = size
        self.tiling = self._tile_plan(tile, tile_overlap, tile_batch, fixed)
        self.confidence = bool(confidence)
        self.classes = select_classes(classes, self.info.class_names, self.backend.path.name)
        self._check_confidence(confidence)
        # On a GPU every call is padded to full batches: one shape keeps one CUDA graph or TensorRT binding.
        self._pad, self._tile_pad = (self.batch, self.tiling.batch) if self.device.type == "cuda" else (1, 1)
        self.backend.__enter__()

    def _tile_plan(self, mode: str, overlap: float, tile_batch: int | None, fixed: int | None) -> TilePlan:
        tile_batch = None if tile_batch is None else whole(tile_batch, "--tile-batch")
        if fixed is not None:
            if tile_batch not in (None, fixed):
                raise DronsegError(f"tile batch {tile_batch}: {self.backend.path.name} was exported for batch {fixed}")
            tile_batch = fixed
        elif tile_batch is None:  # an engine's profile may stop at its build batch
            tile_batch = self.batch if self.backend.name == "tensorrt" else max(self.batch, DEFAULT_TILE_BATCH)
        return TilePlan(mode, tuple(self.info.input_size), number(overlap, "--tile-overlap"), tile_batch,
                        tiling_unable(self.info, self.backend.path.name))

    def _check_confidence(self, confidence: bool | None) -> None:
        if confidence not in (None, True, False):  # "no" is not False
            raise DronsegError(f"confidence={confidence!r}: give True or False")
        if not confidence:
            return
        if self.info.io == "frames" and CONFIDENCE_OUTPUT not in self.info.outputs:
            raise DronsegError(f"{self.backend.path.name} is a frames artifact without a confidence output: "
                               "re-export it with --confidence, or drop --save-conf")
        if self.info.io != "frames" and self.info.head != "logits":
            raise DronsegError(f"{self.backend.path.name} outputs a class map (--head {self.info.head}), so it has no "
                               "probabilities: export it with --head logits, or drop --save-conf")

    def request(self, confidence: bool | None = None, classes=_OWN) -> FrameRequest:
        """What each frame gets besides its class map: the Segmenter's own settings unless given here
        (``classes``: names, None for all). Raises DronsegError for what the model cannot give."""
        self._check_confidence(confidence)  # None: the Segmenter's own, checked when it was made
        chosen = self.classes if classes is _OWN else select_classes(classes, self.info.class_names, self.backend.path.name)
        return FrameRequest(confidence=self.confidence if confidence is None else bool(confidence), classes=chosen)

    def check_live(self, live: bool) -> None:
        """A live source gives the newest frame only: DronsegError when ``batch`` waits for more."""
        if live and self.batch > 1:
            raise DronsegError(f"--batch {self.batch} cannot be used with --live, which processes the newest frame "
                               "only: use --batch 1, or --no-live for a recorded source")

    def describe(self) -> str:
        """e.g. ``torch (cuda fp16 channels_last + CUDA graph) on NVIDIA H100 (sm90), input 1280x720``."""
        return (f"{self.backend.describe()} on {device_description(self.device, self.backend.name == 'torch')}, "
                f"input {format_size(self.info.input_size)}, {self.info.num_classes} classes")

    # -- one frame or a list -------------------------------------------------------------------
    def predict(self, frames: np.ndarray | Sequence[np.ndarray]) -> Result | list[Result]:
        """Segment one (H, W, 3) uint8 BGR frame (-> a Result), or a list of frames (or an (N, H, W, 3)
        array) of any sizes, ``batch`` at a time (-> a list of Results, each at its frame's size)."""
        if isinstance(frames, (str, Path)):
            raise DronsegError(f"predict() takes frames, not a file name ({frames}): read it with cv2.imread, or "
                               "use stream() for a video, image folder or camera")
        if type(frames).__module__ == "torch":  # a tensor: one (H, W, 3) frame or (N, H, W, 3)
            frames = frames.detach().cpu().numpy()
        if not (frames is None or isinstance(frames, Iterable) or type(frames).__module__.startswith("PIL.")):
            raise DronsegError(f"predict() takes an (H, W, 3) uint8 BGR frame or a list of them (got "
                               f"{type(frames).__name__})")
        if frames is None or type(frames).__module__.startswith("PIL.") or (isinstance(frames, np.ndarray) and
                                                                            frames.ndim in (2, 3)):  # one frame, checked
            return self.predict_batch([frames])[0]
        return self.predict_batch(list(frames))

    def predict_batch(self, frames: Sequence[np.ndarray]) -> list[Result]:
        """Segment frames of any sizes (each keeps its own), ``batch`` at a time."""
        request = self.request()
        groups = _groups(FramesSource(frames, copy=False).frames(), self.batch, None)  # none read ahead: no copies
        return [r for group in groups for r in self._segment(group, request)]

    # -- a source --------------------------------------------------------------------------------
    def stream(self, source, *, live: bool | None = None, stride: int = 1, max_frames: int | None = None,
               reconnect_s: float = 30.0, queue_size: int = 8, confidence: bool | None = None,
               classes=_OWN) -> Iterator[Result]:
        """Yield a Result per frame of ``source`` (a path/URL/camera index, a Source, a FrameReader
        or an iterable of frames), decoding in a background thread. ``live`` (default: on for
        cameras and streams) processes only the newest frame; ``stride`` every N-th frame.
        ``confidence``, ``classes``: this stream's instead of the Segmenter's own (see :meth:`request`).
        """
        whole(stride, "stride", hint=" (1: every frame)")
        one_of(live, "live", (None, True, False))  # "no" was live
        if max_frames is not None:
            whole(max_frames, "max_frames", hint=" (None: no limit)")
        request = self.request(confidence, classes)
        reader, owned = source, None
        if not isinstance(source, FrameReader):
            if isinstance(source, (str, Path, int)) or not isinstance(source, (Source, Iterable)):  # None: its error
                source = owned = open_source(source, reconnect_s)
            elif not isinstance(source, Source):  # the reader reads ahead: not past max_frames (the caller may go on)
                last = None if max_frames is None or live else (max_frames - 1) * int(stride) + 1
                source = owned = FramesSource(islice(source, last))
            live = source.live_default if live is None else live
            reader = FrameReader(source, live=live, stride=stride, queue_size=queue_size)
        try:
            self.check_live(reader.live)  # inside: a source opened here is closed when it fails
            groups = _groups(reader, self.batch, max_frames)
            for results in _in_order(groups, lambda group: self._segment(group, request),
                                     self.backend.concurrent_calls):
                yield from results
        finally:
            reader.stop()
            if owned is not None:
                owned.close()

    # -- the work --------------------------------------------------------------------------------
    def _segment(self, records: list[FrameRecord], request: FrameRequest) -> list[Result]:
        """One batch of records -> their Results: runs of same-sized frames go to the backend together,
        frames the TilePlan tiles go window by window (pipeline/tiling.py)."""
        results: list[Result] = []
        for _, run in groupby(records, key=lambda r: r.frame.shape):
            run = list(run)
            height, width = run[0].frame.shape[:2]
            if self.tiling.tiles(width, height):
                results += [self._result(request, r, *segment_tiled(self.backend, r.frame, self.tiling, request.confidence,
                                                                    self._tile_pad)) for r in run]
                continue
            out = self.backend.segment(np.stack([r.frame for r in run]), request.confidence, pad_to=self._pad)
            share = {name: ms / len(run) for name, ms in out.stage_ms.items()}
            results += [self._result(request, r, out.classes[i], None if out.confidence is None else out.confidence[i],
                                     0, share) for i, r in enumerate(run)]
        return results

    def _result(self, request: FrameRequest, record: FrameRecord, mask: np.ndarray, confidence, tiles: int,
                stage_ms: dict) -> Result:
        if request.keep_lut is not None:
            mask = cv2.LUT(mask, request.keep_lut)
        count = class_counts(mask, self.info.num_classes).astype(np.float64)
        return Result(mask=mask, shares=count / max(float(mask.size), 1.0), class_names=list(self.info.class_names),
                      frame=record.frame, index=record.index, timestamp=record.timestamp, name=record.name,
                      source=record.source, timings={"decode": record.decode_ms, **stage_ms}, confidence=confidence,
                      palette=self.info.palette, classes=request.classes, tiles=tiles, read_at=record.read_at,
                      fps=record.fps)

    def close(self) -> None:
        self.backend.deactivate()

    def __exit__(self, *exc) -> None:
        self.close()


def _backend_options(path: Path, device, half: bool, precision: str | None, cuda_graph, streaming: bool) -> dict:
    """The backend's options for a Segmenter: a checkpoint's precision and graph; when ``streaming``, for a
    CPU ONNX Runtime session, which ``stream()`` gives CPU_CALLS batches at once, each call's share of the
    cores (a pool of every core per call oversubscribes them: docs/facts.md#cpu-threads)."""
    if not is_checkpoint(path):
        if precision not in (None, "fp32") or cuda_graph:
            log.warning("precision/cuda_graph apply to checkpoints; %s runs as exported", path.name)
        backend = backend_class(path) if streaming and device.type == "cpu" else None
        if backend is None or "threads" not in backend.OPTIONS:
            return {}
        return {"threads": max(1, (os.cpu_count() or 1) // backend.CPU_CALLS)}
    if precision is None:
        precision = "fp32"
        if half and device.type == "cuda":
            precision = "fp16"
        elif half:
            log.warning("--half is ignored on the CPU (fp16 needs a CUDA GPU); running fp32")
    return {"precision": precision, "head": "logits", "cuda_graph": cuda_graph}


def _in_order(groups: Iterable, work, in_flight: int) -> Iterator:
    """``work(group)`` for each group, in order, with up to ``in_flight`` groups running at once in
    worker threads (a backend whose calls may overlap: ``Backend.concurrent_calls``), so one frame's
    pre/post-processing runs beside another's model; 1: each in turn, in this thread."""
    if in_flight <= 1:
        yield from map(work, groups)
        return
    pool = ThreadPoolExecutor(in_flight, thread_name_prefix="dronseg-segment")
    pending: deque[Future] = deque()
    try:
        groups = iter(groups)
        while True:
            try:
                group = next(groups)
            except StopIteration:
                break
            except Exception:  # the source failed (a stream lost): the frames already read come out first
                while pending:
                    yield pending.popleft().result()
                raise
            pending.append(pool.submit(work, group))
            if len(pending) == in_flight:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _groups(records: Iterable[FrameRecord], size: int, max_frames: int | None) -> Iterator[list[FrameRecord]]:
    """Lists of ``size`` records (the last may be shorter), ``max_frames`` records in all; when the
    source fails, the records read before are a last group before its error."""
    records = islice(records, max_frames)  # never reads a record past the last one wanted
    while True:
        group: list[FrameRecord] = []
        try:
            for record in islice(records, size):
                group.append(record)
        except Exception:
            if group:
                yield group
            raise
        if not group:
            return
        yield group
