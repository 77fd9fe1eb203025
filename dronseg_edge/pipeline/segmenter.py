"""The Python API: ``Segmenter(model).predict(frame)`` and ``Segmenter(model).stream(source)``.

Any artifact works (checkpoint, ONNX, TensorRT engine): the backend comes from
``runtime.registry.load_backend`` and the model's own metadata (input size, classes, palette,
normalisation). A frame of another size is resized to the model's input and the class map brought
back to the frame's size. Two ways to do that work, one per module:

- ``pipeline/host_work.py``: numpy and OpenCV, never imports torch. ``.onnx`` and ``.engine``
  files on the CPU, on a GPU without torch, and frames artifacts (``export --io frames``) always.
- ``pipeline/torch_work.py``: torch on the model's device. Checkpoints, and plain ``.onnx`` /
  ``.engine`` files on a GPU when torch is installed (only uint8 crosses the bus both ways).

``prepost=`` (auto | torch | host) chooses explicitly, e.g. to measure both on one GPU.

``tile=`` (off | auto | on; default off): frames at least twice the model input on a side (auto) or
any larger frame (on) are segmented in overlapping windows at full resolution instead of being
shrunk (pipeline/tiling.py, docs/tiling.md). Off by default: a 720p video with a 320x192 model
would otherwise cost ~16 windows a frame, and the runtime cannot know the scale the model was
trained at (a model trained on shrunk whole frames sees objects too large in full-resolution windows). ``confidence=True`` adds the maximum-probability map;
``classes=`` keeps only those classes in masks, overlays and shares (pipeline/request.py).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from dronseg_edge.devices import device_description, resolve_device, resolve_lean_device
from dronseg_edge.errors import DronsegError
from dronseg_edge.pipeline.reader import FrameReader
from dronseg_edge.pipeline.request import FrameRequest, select_classes
from dronseg_edge.pipeline.result import Result
from dronseg_edge.pipeline.sources import FrameRecord, FramesSource, Source, open_source
from dronseg_edge.pipeline.tiling import DEFAULT_OVERLAP, TilePlan, tiling_unable
from dronseg_edge.runtime.base import Backend
from dronseg_edge.runtime.registry import is_checkpoint, load_backend
from dronseg_edge.sizes import format_size

log = logging.getLogger(__name__)

UPSAMPLE_MODES = ("auto", "logits", "mask")
PREPOST_MODES = ("auto", "torch", "host")
_OWN = object()  # stream() called without overlay_alpha / classes: the Segmenter's own apply
DEFAULT_TILE_BATCH = 4  # windows per call for dynamic-batch checkpoints and ONNX files (at least --batch)
__all__ = ["Result", "Segmenter"]  # Result lives in result.py; imported from here too


class Segmenter:
    """Segments frames with any model artifact; see the module docstring for the resizing policy.

    ``model``: path to a .pt/.onnx/.engine file, or an already-built Backend. ``device``: auto |
    cpu | cuda | cuda:N. ``half``: fp16 for checkpoints on a GPU (ignored with a warning on the CPU
    and for ONNX/engines, whose precision is fixed at export); ``precision`` overrides it (fp32 |
    fp16 | bf16). ``batch``: frames per inference call. ``size``: (W, H) model input for dynamic
    artifacts (checkpoints); default the artifact's own. ``overlay_alpha``: on a GPU, also blend
    the overlay there (results carry ``overlay``). ``cuda_graph``: checkpoints only, default on CUDA.
    ``backend_options``: passed to the backend's constructor (e.g. ``{"provider": "cuda"}`` for ONNX).
    ``tile``: auto | on | off (module docstring); ``tile_overlap``: share of a window its neighbour
    shares (0..0.75); ``tile_batch``: windows per inference call (default: a fixed-batch artifact's
    batch, a TensorRT engine's ``batch``, else at least 4). ``confidence``: results carry the (H, W)
    uint8 maximum class probability x 255 (it costs a softmax). ``classes``: class names to keep
    (a list or "person,car"); the rest become 255 in masks and stay uncoloured in overlays.
    ``meta``: metadata FILE for an .onnx/.engine without its own (the ONNX an engine was built from,
    or a sidecar JSON; runtime/registry.read_meta_file).
    Not thread-safe: use one Segmenter per thread.
    """

    def __init__(self, model: str | Path | Backend, device="auto", half: bool = False, *,
                 precision: str | None = None, batch: int = 1, size: tuple[int, int] | None = None,
                 upsample: str = "auto", overlay_alpha: float | None = None, cuda_graph: bool | None = None,
                 backend_options: dict | None = None, prepost: str = "auto", tile: str = "off",
                 tile_overlap: float = DEFAULT_OVERLAP, tile_batch: int | None = None, confidence: bool = False,
                 classes=None, meta: str | Path | None = None):
        if prepost not in PREPOST_MODES:
            raise DronsegError(f"prepost {prepost!r} is not one of {', '.join(PREPOST_MODES)}")
        if isinstance(model, Backend):
            self.backend = model
        else:
            checkpoint = is_checkpoint(model)
            if isinstance(device, str) or device is None:
                # A checkpoint needs torch's device; an ONNX file or engine is opened without torch.
                device = resolve_device(device or "auto") if checkpoint else resolve_lean_device(device or "auto")
            options = self._torch_options(Path(model), device, half, precision, cuda_graph)
            self.backend = load_backend(model, device, meta=meta, **options, **(backend_options or {}))
            if half and options.get("precision") is None and self.backend.info.precision == "fp32":
                log.warning("--half does not change %s: its precision (fp32) was fixed at export; "
                            "export it with --precision fp16 instead", Path(model).name)
        self.device = self.backend.device
        self.info = self.backend.info
        if int(batch) < 1:
            raise DronsegError(f"--batch {batch} must be at least 1")
        fixed = self.info.batch if not self.info.dynamic else None
        if fixed is not None and batch > fixed:
            raise DronsegError(f"--batch {batch}: {self.backend.path.name} was exported for batch {fixed}; "
                               f"use --batch {fixed} or re-export it with --batch {batch} (or --dynamic)")
        self.batch = int(batch)
        infer_batch = fixed or self.batch  # a fixed-batch artifact gets padded batches
        if size is not None and tuple(size) != tuple(self.info.input_size):
            if not self.info.dynamic:
                raise DronsegError(f"{self.backend.path.name} was exported for {format_size(self.info.input_size)}; "
                                   f"re-export it with --size {format_size(size)} (or --dynamic)")
            self.info.input_size = (int(size[0]), int(size[1]))
        if upsample not in UPSAMPLE_MODES:
            raise DronsegError(f"upsample {upsample!r} is not one of {', '.join(UPSAMPLE_MODES)}")
        self.upsample_logits = upsample == "logits" or (upsample == "auto" and self.device.type == "cuda")
        self.overlay_alpha = overlay_alpha
        self.tiling = self._tile_plan(tile, tile_overlap, tile_batch, fixed)
        self.confidence = bool(confidence)
        self.classes = self._select(classes)
        self._check_confidence(self.confidence)
        self.work = self._make_work(prepost, infer_batch)
        self.backend.__enter__()

    def _tile_plan(self, mode: str, overlap: float, tile_batch: int | None, fixed: int | None) -> TilePlan:
        if fixed is not None:
            if tile_batch not in (None, fixed):
                raise DronsegError(f"tile batch {tile_batch}: {self.backend.path.name} was exported for batch {fixed}")
            tile_batch = fixed
        elif tile_batch is None:  # an engine's profile may stop at its build batch
            tile_batch = self.batch if self.backend.name == "tensorrt" else max(self.batch, DEFAULT_TILE_BATCH)
        return TilePlan(mode, tuple(self.info.input_size), float(overlap), int(tile_batch),
                        tiling_unable(self.info, self.backend.path.name))

    def _select(self, classes) -> tuple[int, ...] | None:
        return select_classes(classes, self.info.class_names, self.backend.path.name)

    def _check_confidence(self, confidence: bool) -> None:
        if not confidence:
            return
        if self.info.io == "frames" and "confidence" not in self.info.outputs:
            raise DronsegError(f"{self.backend.path.name} is a frames artifact without a confidence output: "
                               "re-export it with --confidence, or drop --save-conf")
        if self.info.io != "frames" and self.info.head != "logits":
            raise DronsegError(f"{self.backend.path.name} outputs a class map (--head {self.info.head}), so it has no "
                               "probabilities: export it with --head logits, or drop --save-conf")

    def request(self, overlay_alpha=_OWN, confidence: bool | None = None, classes=_OWN) -> FrameRequest:
        """What each frame gets besides its class map: the Segmenter's own settings unless given here
        (``classes``: names, None for all). Raises DronsegError for what the model cannot give."""
        if confidence is not None:
            self._check_confidence(bool(confidence))
        return FrameRequest(overlay_alpha=self.overlay_alpha if overlay_alpha is _OWN else overlay_alpha,
                            confidence=self.confidence if confidence is None else bool(confidence),
                            classes=self.classes if classes is _OWN else self._select(classes))

    def _make_work(self, prepost: str, infer_batch: int):
        """The torch or the host work (see the module docstring); torch is imported only for the former."""
        uses_torch = self.backend.name == "torch"
        if prepost == "auto":
            prepost = "torch" if uses_torch or (self.info.io != "frames" and self.device.type == "cuda"
                                                 and importlib.util.find_spec("torch") is not None) else "host"
        if prepost == "host" and uses_torch:
            raise DronsegError("prepost='host' needs an .onnx or .engine file: a checkpoint runs on torch")
        if prepost == "torch" and self.info.io == "frames":
            raise DronsegError(f"{self.backend.path.name} is a frames artifact (export --io frames): its pre/post-"
                               "processing is inside the graph; use prepost='auto' or 'host'")
        if prepost == "host":
            from dronseg_edge.pipeline.host_work import HostWork

            return HostWork(self.backend, self.info, infer_batch, self.upsample_logits, self.tiling)
        from dronseg_edge.pipeline.torch_work import TorchWork

        return TorchWork(self.backend, self.info, self.device, infer_batch, self.upsample_logits, self.tiling)

    @staticmethod
    def _torch_options(path: Path, device, half: bool, precision: str | None, cuda_graph) -> dict:
        if not is_checkpoint(path):
            if precision not in (None, "fp32") or cuda_graph:
                log.warning("precision/cuda_graph apply to checkpoints; %s runs as exported", path.name)
            return {}
        if precision is None:
            precision = "fp32"
            if half and device.type == "cuda":
                precision = "fp16"
            elif half:
                log.warning("--half is ignored on the CPU (fp16 needs a CUDA GPU); running fp32")
        return {"precision": precision, "head": "logits", "cuda_graph": cuda_graph}

    def describe(self) -> str:
        """e.g. ``torch (cuda fp16 channels_last + CUDA graph) on NVIDIA H100 (sm90), input 1280x720``."""
        return (f"{self.backend.describe()} on {device_description(self.device)}, "
                f"input {format_size(self.info.input_size)}, {self.info.num_classes} classes")

    # -- one frame or a list -------------------------------------------------------------------
    def predict(self, frames: np.ndarray | Sequence[np.ndarray]) -> Result | list[Result]:
        """Segment one (H, W, 3) uint8 BGR frame (-> a Result), or a list of frames (or an (N, H, W, 3)
        array) of any sizes, ``batch`` at a time (-> a list of Results, each at its frame's size)."""
        if isinstance(frames, np.ndarray) and frames.ndim == 3:
            return self.predict_batch([frames])[0]
        return self.predict_batch(list(frames))

    def predict_batch(self, frames: Sequence[np.ndarray]) -> list[Result]:
        """Segment frames of any sizes (each keeps its own), ``batch`` at a time."""
        records = list(FramesSource(frames).frames())
        request = self.request()
        results: list[Result] = []
        for start in range(0, len(records), self.batch):
            results.extend(self._collect(self._submit(records[start:start + self.batch], request), request))
        return results

    # -- a source --------------------------------------------------------------------------------
    def stream(self, source, *, live: bool | None = None, stride: int = 1, max_frames: int | None = None,
               reconnect_s: float = 30.0, queue_size: int = 8, overlay_alpha=_OWN, confidence: bool | None = None,
               classes=_OWN) -> Iterator[Result]:
        """Yield a Result per frame of ``source`` (a path/URL/camera index, a Source, a FrameReader
        or an iterable of frames), decoding in a background thread. ``live`` (default: on for
        cameras and streams) processes only the newest frame; ``stride`` every N-th frame.
        ``overlay_alpha`` (float or None), ``confidence``, ``classes``: this stream's instead of the
        Segmenter's own (see :meth:`request`).
        """
        request = self.request(overlay_alpha, confidence, classes)
        reader, owned = self._reader(source, live, stride, reconnect_s, queue_size)
        if reader.live and self.batch > 1:
            raise DronsegError(f"--batch {self.batch} cannot be used with --live, which processes the newest frame "
                               "only: use --batch 1, or --no-live for a recorded source")
        # On a GPU the next batch is queued before the previous one is collected, so the CPU work
        # around each batch overlaps the GPU's; live mode skips this to keep latency at one frame.
        overlap = self.work.name == "torch" and self.device.type == "cuda" and not reader.live
        try:
            pending = None
            for group in _groups(reader, self.batch, max_frames):
                submitted = self._submit(group, request)
                if not overlap:
                    yield from self._collect(submitted, request)
                    continue
                if pending is not None:
                    yield from self._collect(pending, request)
                pending = submitted
            if pending is not None:
                yield from self._collect(pending, request)
        finally:
            reader.stop()
            if owned is not None:
                owned.close()

    @staticmethod
    def _reader(source, live, stride, reconnect_s, queue_size) -> tuple[FrameReader, Source | None]:
        if isinstance(source, FrameReader):
            return source, None
        if isinstance(source, (str, Path, int)):
            source = open_source(source, reconnect_s)
            owned = source
        elif isinstance(source, Source):
            owned = None
        else:
            source = owned = FramesSource(source)
        live = source.live_default if live is None else live
        return FrameReader(source, live=live, stride=stride, queue_size=queue_size), owned

    # -- the work --------------------------------------------------------------------------------
    def _submit(self, records: list[FrameRecord], request: FrameRequest):
        return self.work.submit(records, request)

    def _collect(self, pending, request: FrameRequest) -> list[Result]:
        masks, counts, overlays, confidences, batch_ms, tiles = pending.finish()
        n = len(pending.records)
        stage_ms = {name: ms / n for name, ms in batch_ms.items()}
        results = []
        for record, mask, count, blended, confidence, windows in zip(pending.records, masks, counts, overlays,
                                                                      confidences, tiles):
            count = np.asarray(count, np.float64)
            results.append(Result(
                mask=mask, shares=count / max(float(mask.size), 1.0), class_names=list(self.info.class_names),
                frame=record.frame, index=record.index, timestamp=record.timestamp, name=record.name,
                source=record.source, overlay=blended, timings={"decode": record.decode_ms, **stage_ms},
                confidence=confidence, palette=self.info.palette, classes=request.classes, tiles=windows,
            ))
        return results

    def close(self) -> None:
        self.backend.deactivate()

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _groups(records: Iterable[FrameRecord], size: int, max_frames: int | None) -> Iterator[list[FrameRecord]]:
    group: list[FrameRecord] = []
    taken = 0
    for record in records:
        group.append(record)
        taken += 1
        if len(group) == size or taken == max_frames:
            yield group
            group = []
        if max_frames is not None and taken >= max_frames:
            return
    if group:
        yield group
