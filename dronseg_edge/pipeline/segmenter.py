"""The Python API: ``Segmenter(model).predict(frame)`` and ``Segmenter(model).stream(source)``.

Any artifact works (checkpoint, ONNX, TensorRT engine): the backend comes from
``runtime.registry.load_backend`` and the model's own metadata (input size, classes, palette,
normalisation). A frame of another size is resized to the model's input (bilinear, on the device)
and the class map brought back to the frame's size. With logits and a GPU, the logits are
upsampled bilinearly and then argmax-ed (smoother edges, a fraction of a millisecond on a GPU); on the CPU
that costs far more than the model (docs/facts.md#pipeline-timings), so there the class map is resized (nearest)
instead; ``upsample=`` chooses explicitly. On a GPU only the uint8 class map (and the overlay,
when asked for) is copied back, through pinned memory.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dronseg_edge.devices import device_description, resolve_device
from dronseg_edge.errors import DronsegError
from dronseg_edge.pipeline.overlay import overlay_torch, palette_tensor
from dronseg_edge.pipeline.reader import FrameReader
from dronseg_edge.pipeline.sources import FrameRecord, FramesSource, Source, open_source
from dronseg_edge.runtime.base import Backend, preprocess
from dronseg_edge.runtime.batching import pad_batch
from dronseg_edge.runtime.registry import is_checkpoint, load_backend
from dronseg_edge.runtime.staging import HostStaging
from dronseg_edge.sizes import format_size

log = logging.getLogger(__name__)

UPSAMPLE_MODES = ("auto", "logits", "mask")
# Bilinear logits for a 4K frame take C x 2160 x 3840 x 4 bytes (~400 MB for 12 classes); past
# this the class map is resized instead, to keep memory bounded on an 8 GB Jetson.
MAX_UPSAMPLED_LOGITS_BYTES = 512 << 20
_OWN_ALPHA = object()  # stream() called without overlay_alpha: the Segmenter's own applies


@dataclass
class Result:
    """One segmented frame.

    ``mask``: (H, W) uint8 class indices at the frame's own size; ``shares``: (C,) fraction of
    pixels per class (sums to 1); ``frame``: the (H, W, 3) uint8 BGR input; ``overlay``: the
    blended (H, W, 3) BGR image when the Segmenter made it on the GPU, else None; ``timings``: ms
    per stage for this frame (decode, preprocess, inference, postprocess).
    """

    mask: np.ndarray
    shares: np.ndarray
    class_names: list[str]
    frame: np.ndarray
    index: int = 0
    timestamp: float | None = None
    name: str = ""
    source: str = ""
    overlay: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return int(self.mask.shape[1]), int(self.mask.shape[0])

    def shares_by_name(self, digits: int = 6) -> dict[str, float]:
        return {name: round(float(share), digits) for name, share in zip(self.class_names, self.shares)}


class _StageClock:
    """Stage boundaries: CUDA events on a GPU (no synchronisation until read), perf_counter on the CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        # The Segmenter's work runs on its device's current stream; a bare event.record() would
        # record on the current *device's* stream, another GPU's when the Segmenter is on cuda:1.
        self.stream = torch.cuda.current_stream(device) if self.cuda else None
        self.names: list[str] = []
        self.marks: list = []
        self.mark("start")

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(self.stream)
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())
        self.names.append(name)

    def wait(self) -> None:
        if self.cuda:
            self.marks[-1].synchronize()

    def elapsed_ms(self) -> dict[str, float]:
        out = {}
        for i in range(1, len(self.marks)):
            before, after = self.marks[i - 1], self.marks[i]
            out[self.names[i]] = before.elapsed_time(after) if self.cuda else (after - before) * 1e3
        return out


@dataclass
class _Pending:
    records: list[FrameRecord]
    masks: list[torch.Tensor]  # (H, W) uint8, on the host (pinned on CUDA)
    counts: list[torch.Tensor]  # (C,) pixel counts on the host
    overlays: list[torch.Tensor | None]
    clock: _StageClock


class Segmenter:
    """Segments frames with any model artifact; see the module docstring for the resizing policy.

    ``model``: path to a .pt/.onnx/.engine file, or an already-built Backend. ``device``: auto |
    cpu | cuda | cuda:N. ``half``: fp16 for checkpoints on a GPU (ignored with a warning on the CPU
    and for ONNX/engines, whose precision is fixed at export); ``precision`` overrides it (fp32 |
    fp16 | bf16). ``batch``: frames per inference call. ``size``: (W, H) model input for dynamic
    artifacts (checkpoints); default the artifact's own. ``overlay_alpha``: on a GPU, also blend
    the overlay there (results carry ``overlay``). ``cuda_graph``: checkpoints only, default on CUDA.
    ``backend_options``: passed to the backend's constructor (e.g. ``{"provider": "cuda"}`` for ONNX).
    Not thread-safe: use one Segmenter per thread.
    """

    def __init__(self, model: str | Path | Backend, device: str | torch.device = "auto", half: bool = False, *,
                 precision: str | None = None, batch: int = 1, size: tuple[int, int] | None = None,
                 upsample: str = "auto", overlay_alpha: float | None = None, cuda_graph: bool | None = None,
                 backend_options: dict | None = None):
        if isinstance(model, Backend):
            self.backend = model
        else:
            device = device if isinstance(device, torch.device) else resolve_device(str(device))
            options = self._torch_options(Path(model), device, half, precision, cuda_graph)
            self.backend = load_backend(model, device, **options, **(backend_options or {}))
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
        self._infer_batch = fixed or self.batch  # a fixed-batch artifact gets padded batches
        if size is not None and tuple(size) != tuple(self.info.input_size):
            if not self.info.dynamic:
                raise DronsegError(f"{self.backend.path.name} was exported for {format_size(self.info.input_size)}; "
                                   f"re-export it with --size {format_size(size)} (or --dynamic)")
            self.info.input_size = (int(size[0]), int(size[1]))
        if upsample not in UPSAMPLE_MODES:
            raise DronsegError(f"upsample {upsample!r} is not one of {', '.join(UPSAMPLE_MODES)}")
        self.upsample_logits = upsample == "logits" or (upsample == "auto" and self.device.type == "cuda")
        self.overlay_alpha = overlay_alpha
        self._palette: torch.Tensor | None = None
        self._staging = HostStaging(self.device) if self.device.type == "cuda" else None
        self.backend.__enter__()

    @staticmethod
    def _torch_options(path: Path, device: torch.device, half: bool, precision: str | None, cuda_graph) -> dict:
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
    def predict(self, frame: np.ndarray) -> Result:
        """Segment one (H, W, 3) uint8 BGR frame."""
        return self.predict_batch([frame])[0]

    def predict_batch(self, frames: Sequence[np.ndarray]) -> list[Result]:
        """Segment frames of any sizes (each keeps its own), ``batch`` at a time."""
        records = list(FramesSource(frames).frames())
        results: list[Result] = []
        for start in range(0, len(records), self.batch):
            results.extend(self._collect(self._submit(records[start:start + self.batch], self.overlay_alpha)))
        return results

    # -- a source --------------------------------------------------------------------------------
    def stream(self, source, *, live: bool | None = None, stride: int = 1, max_frames: int | None = None,
               reconnect_s: float = 30.0, queue_size: int = 8, overlay_alpha=_OWN_ALPHA) -> Iterator[Result]:
        """Yield a Result per frame of ``source`` (a path/URL/camera index, a Source, a FrameReader
        or an iterable of frames), decoding in a background thread. ``live`` (default: on for
        cameras and streams) processes only the newest frame; ``stride`` every N-th frame.
        ``overlay_alpha`` (float or None): this stream's GPU overlay instead of the Segmenter's own.
        """
        alpha = self.overlay_alpha if overlay_alpha is _OWN_ALPHA else overlay_alpha
        reader, owned = self._reader(source, live, stride, reconnect_s, queue_size)
        if reader.live and self.batch > 1:
            raise DronsegError(f"--batch {self.batch} cannot be used with --live, which processes the newest frame "
                               "only: use --batch 1, or --no-live for a recorded source")
        # On a GPU the next batch is queued before the previous one is collected, so the CPU work
        # around each batch overlaps the GPU's; live mode skips this to keep latency at one frame.
        overlap = self.device.type == "cuda" and not reader.live
        try:
            pending = None
            for group in _groups(reader, self.batch, max_frames):
                submitted = self._submit(group, alpha)
                if not overlap:
                    yield from self._collect(submitted)
                    continue
                if pending is not None:
                    yield from self._collect(pending)
                pending = submitted
            if pending is not None:
                yield from self._collect(pending)
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
    @torch.inference_mode()
    def _submit(self, records: list[FrameRecord], overlay_alpha: float | None) -> _Pending:
        clock = _StageClock(self.device)
        on_cuda = self.device.type == "cuda"
        if on_cuda:  # through pinned buffers: from pageable memory a "non_blocking" copy blocks the host
            frames = [self._staging.upload(r.frame) for r in records]
        else:
            frames = [torch.from_numpy(np.ascontiguousarray(r.frame)) for r in records]
        batch = torch.cat([preprocess(f, self.info, self.device) for f in frames])
        batch, _ = pad_batch(batch, self._infer_batch)
        clock.mark("preprocess")
        out = torch.as_tensor(self.backend.infer(batch))
        clock.mark("inference")
        masks, counts, overlays = [], [], []
        for i, frame in enumerate(frames):
            mask = self._class_map(out[i:i + 1], frame.shape[0], frame.shape[1])
            blended = None
            if on_cuda and overlay_alpha is not None:
                if self._palette is None:
                    self._palette = palette_tensor(self.info.palette, self.device)
                blended = overlay_torch(frame[None], mask[None], self._palette, float(overlay_alpha))[0]
            bins = self.info.num_classes
            if on_cuda:
                count = torch.histc(mask.float(), bins=bins, min=-0.5, max=bins - 0.5)  # bincount would sync
                mask, count, blended = (_to_pinned_host(t) for t in (mask, count, blended))
            else:  # numpy's bincount is ~10x faster than torch's on the CPU
                count = torch.from_numpy(np.bincount(mask.numpy().ravel(), minlength=bins)[:bins])
            masks.append(mask)
            counts.append(count)
            overlays.append(blended)
        clock.mark("postprocess")
        return _Pending(records, masks, counts, overlays, clock)

    def _class_map(self, out: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Backend output for one frame ((1, C, h, w) logits or (1, h, w) classes) -> (H, W) uint8 on the device."""
        if out.ndim == 4:
            channels, (h, w) = out.shape[1], out.shape[-2:]
            fits = channels * height * width * 4 <= MAX_UPSAMPLED_LOGITS_BYTES
            if (h, w) != (height, width) and self.upsample_logits and fits:
                out = F.interpolate(out.float(), size=(height, width), mode="bilinear", align_corners=False)
            out = out.argmax(dim=1)
        classes = out.to(torch.uint8)
        if classes.shape[-2:] != (height, width):
            classes = F.interpolate(classes[:, None], size=(height, width), mode="nearest-exact")[:, 0]
        return classes[0]

    def _collect(self, pending: _Pending) -> list[Result]:
        pending.clock.wait()
        n = len(pending.records)
        stage_ms = {name: ms / n for name, ms in pending.clock.elapsed_ms().items()}
        results = []
        for record, mask, count, blended in zip(pending.records, pending.masks, pending.counts, pending.overlays):
            mask_np = mask.numpy()
            counts = count.numpy().astype(np.float64)
            shares = counts / max(float(counts.sum()), 1.0)
            results.append(Result(
                mask=mask_np, shares=shares, class_names=list(self.info.class_names), frame=record.frame,
                index=record.index, timestamp=record.timestamp, name=record.name, source=record.source,
                overlay=None if blended is None else blended.numpy(),
                timings={"decode": record.decode_ms, **stage_ms},
            ))
        return results

    def close(self) -> None:
        self.backend.deactivate()

    def __enter__(self) -> "Segmenter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _to_pinned_host(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """Start an asynchronous copy into page-locked memory (torch's caching host allocator reuses it)."""
    if tensor is None:
        return None
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host


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
