"""The Segmenter's work with torch: pre/post-processing on the model's device (a GPU above all).

Used for checkpoints, and for ``.onnx``/``.engine`` files of plain tensors on a GPU when torch is
installed: colour conversion, resizing and normalisation run on the GPU, so only uint8 frames go
up and only the uint8 class map (and the overlay, when asked for) comes down, through pinned
memory. With logits and a GPU, the logits are upsampled bilinearly and then argmax-ed (smoother
edges, a fraction of a millisecond on a GPU); on the CPU that costs far more than the model
(docs/facts.md#pipeline-timings), so there the class map is resized (nearest) instead. Frames the
Segmenter's TilePlan tiles are cut into windows on the device and blended there (pipeline/tiling.py,
:class:`TorchTileBlender`); the confidence map and the class filter are made on the device too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dronseg_edge.devices import as_torch_device
from dronseg_edge.metadata import ModelInfo
from dronseg_edge.pipeline.overlay import overlay_torch, palette_tensor
from dronseg_edge.pipeline.request import FILTERED, FrameRequest
from dronseg_edge.pipeline.sources import FrameRecord
from dronseg_edge.pipeline.tiling import TileBlender, TileGrid, TilePlan, window_weights
from dronseg_edge.runtime.base import Backend, preprocess
from dronseg_edge.runtime.batching import pad_batch
from dronseg_edge.runtime.staging import HostStaging

# Bilinear logits for a 4K frame take C x 2160 x 3840 x 4 bytes (~400 MB for 12 classes); past
# this the class map is resized instead, to keep memory bounded on an 8 GB Jetson.
MAX_UPSAMPLED_LOGITS_BYTES = 512 << 20


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
        """Milliseconds per stage name, summed over its marks (a tiled frame marks each batch of windows)."""
        out: dict[str, float] = {}
        for i in range(1, len(self.marks)):
            before, after = self.marks[i - 1], self.marks[i]
            ms = before.elapsed_time(after) if self.cuda else (after - before) * 1e3
            out[self.names[i]] = out.get(self.names[i], 0.0) + ms
        return out


@dataclass
class TorchPending:
    records: list[FrameRecord]
    masks: list[torch.Tensor]  # (H, W) uint8, on the host (pinned on CUDA)
    counts: list[torch.Tensor]  # (C,) pixel counts on the host
    overlays: list[torch.Tensor | None]
    confidences: list[torch.Tensor | None]  # (H, W) uint8 on the host, when asked for
    tiles: list[int]  # windows per frame (0: resized whole)
    clock: _StageClock

    def finish(self):
        """Wait for the device; (masks, counts, overlays, confidences, ms per stage for the whole batch,
        windows per frame), numpy arrays on the host."""
        self.clock.wait()
        return ([m.numpy() for m in self.masks], [c.numpy() for c in self.counts],
                [_numpy(o) for o in self.overlays], [_numpy(c) for c in self.confidences],
                self.clock.elapsed_ms(), self.tiles)


class TorchWork:
    """Submits batches to ``backend`` with torch pre/post on ``device``; results are collected later
    (on a GPU the next batch is queued before the previous one is collected)."""

    name = "torch"

    def __init__(self, backend: Backend, info: ModelInfo, device, infer_batch: int, upsample_logits: bool,
                 tiling: TilePlan):
        self.backend, self.info, self.infer_batch = backend, info, infer_batch
        self.device = as_torch_device(device)
        self.upsample_logits = upsample_logits
        self.tiling = tiling
        self._palette: torch.Tensor | None = None
        self._weights: torch.Tensor | None = None
        self._luts: dict[tuple[int, ...], torch.Tensor] = {}
        self._staging = HostStaging(self.device) if self.device.type == "cuda" else None

    @torch.inference_mode()
    def submit(self, records: list[FrameRecord], request: FrameRequest) -> TorchPending:
        clock = _StageClock(self.device)
        on_cuda = self.device.type == "cuda"
        if on_cuda:  # through pinned buffers: from pageable memory a "non_blocking" copy blocks the host
            frames = [self._staging.upload(r.frame) for r in records]
        else:
            frames = [torch.from_numpy(np.ascontiguousarray(r.frame)) for r in records]
        tiled = [self.tiling.tiles(f.shape[1], f.shape[0]) for f in frames]
        classes: list = [None] * len(frames)
        confidences: list = [None] * len(frames)
        tiles = [0] * len(frames)
        whole = [i for i, t in enumerate(tiled) if not t]
        if whole:
            # Antialiased when shrinking, as training's INTER_AREA and the host work's resize are.
            batch = torch.cat([preprocess(frames[i], self.info, self.device, antialias=True) for i in whole])
            batch, _ = pad_batch(batch, self.infer_batch)
            clock.mark("preprocess")
            out = torch.as_tensor(self.backend.infer(batch))
            clock.mark("inference")
            for j, i in enumerate(whole):
                classes[i], confidences[i] = self._class_map(out[j:j + 1], frames[i].shape[0], frames[i].shape[1],
                                                             request.confidence)
            clock.mark("postprocess")
        for i in (i for i, t in enumerate(tiled) if t):
            classes[i], confidences[i], tiles[i] = self._tiled(frames[i], request.confidence, clock)
        lut = self._lut(request)
        masks, counts, overlays, confs = [], [], [], []
        for frame, mask, conf in zip(frames, classes, confidences):
            if lut is not None:
                mask = lut[mask.long()]
            blended = None
            if on_cuda and request.overlay_alpha is not None:
                if self._palette is None:
                    self._palette = palette_tensor(self.info.palette, self.device)
                blended = overlay_torch(frame[None], mask[None], self._palette, float(request.overlay_alpha),
                                        hidden=FILTERED if lut is not None else None)[0]
            bins = self.info.num_classes
            if on_cuda:
                # bincount would sync; histc leaves FILTERED (255) out, being past the last bin
                count = torch.histc(mask.float(), bins=bins, min=-0.5, max=bins - 0.5)
                mask, count, blended, conf = (_to_pinned_host(t) for t in (mask, count, blended, conf))
            else:  # numpy's bincount is ~10x faster than torch's on the CPU
                count = torch.from_numpy(np.bincount(mask.numpy().ravel(), minlength=bins)[:bins])
            masks.append(mask)
            counts.append(count)
            overlays.append(blended)
            confs.append(conf)
        clock.mark("postprocess")
        return TorchPending(records, masks, counts, overlays, confs, tiles, clock)

    def _class_map(self, out: torch.Tensor, height: int, width: int, confidence: bool):
        """Backend output for one frame ((1, C, h, w) logits or (1, h, w) classes) -> ((H, W) uint8
        classes, (H, W) uint8 confidence or None), on the device."""
        conf = None
        if out.ndim == 4:
            channels, (h, w) = out.shape[1], out.shape[-2:]
            fits = channels * height * width * 4 <= MAX_UPSAMPLED_LOGITS_BYTES
            if (h, w) != (height, width) and self.upsample_logits and fits:
                out = F.interpolate(out.float(), size=(height, width), mode="bilinear", align_corners=False)
            if confidence:
                conf = max_probability_u8(out.float(), dim=1)
            out = argmax_u8(out[0])[None]
        classes = out.to(torch.uint8)
        if classes.shape[-2:] != (height, width):
            classes = F.interpolate(classes[:, None], size=(height, width), mode="nearest-exact")[:, 0]
        if conf is not None and conf.shape[-2:] != (height, width):
            conf = F.interpolate(conf[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)
            conf = conf.round_().clamp_(0, 255).to(torch.uint8)[:, 0]
        return classes[0], (conf[0] if conf is not None else None)

    def _tiled(self, frame: torch.Tensor, confidence: bool, clock: _StageClock):
        """One (H, W, 3) uint8 frame on the device in windows of the model input, logits blended there."""
        height, width = frame.shape[:2]
        grid = self.tiling.grid(width, height)
        if self._weights is None:
            self._weights = torch.from_numpy(window_weights(*self.info.input_size)).to(self.device)
        tile_w, tile_h = grid.tile
        blender = TorchTileBlender(grid, self.info.num_classes, self._weights, self.tiling.batch, confidence,
                                   self.device)
        # A fixed-batch artifact takes its batch exactly; on a GPU full batches keep one shape (one CUDA graph).
        pad_to = self.infer_batch if not self.info.dynamic else (
            self.tiling.batch if self.device.type == "cuda" else 1)
        for windows in grid.batches(self.tiling.batch):
            crops = torch.stack([frame[y:y + tile_h, x:x + tile_w] for x, y in windows])
            batch, real = pad_batch(preprocess(crops, self.info, self.device), pad_to)
            clock.mark("preprocess")
            out = torch.as_tensor(self.backend.infer(batch))
            clock.mark("inference")
            blender.add(windows, out[:real].float())  # consumed now: a CUDA graph's output is overwritten next call
            clock.mark("postprocess")
        classes, conf = blender.result()
        return classes, conf, len(grid.windows)

    def _lut(self, request: FrameRequest) -> torch.Tensor | None:
        if request.keep_lut is None:
            return None
        if request.classes not in self._luts:
            self._luts[request.classes] = torch.from_numpy(request.keep_lut).to(self.device)
        return self._luts[request.classes]


class TorchTileBlender(TileBlender):
    """pipeline/tiling.py's blender on torch tensors on ``device``."""

    def __init__(self, grid: TileGrid, num_classes: int, weights: torch.Tensor, batch: int, confidence: bool,
                 device: torch.device):
        self.device = device
        super().__init__(grid, num_classes, weights, batch, confidence)

    def _zeros(self, shape):
        return torch.zeros(shape, dtype=torch.float32, device=self.device)

    def _outputs(self, height: int, width: int, confidence: bool):
        make = lambda: torch.empty((height, width), dtype=torch.uint8, device=self.device)  # noqa: E731
        return make(), (make() if confidence else None)

    def _finish_rows(self, logits, weight):
        classes = argmax_u8(logits)
        return classes, (max_probability_u8(logits / weight, dim=0) if self.confidence else None)

    def _shift(self, count: int) -> None:
        for array in (self.logits, self.weight):
            array[..., :self.rows - count, :] = array[..., count:, :].clone()
            array[..., self.rows - count:, :] = 0.0


def argmax_u8(logits: torch.Tensor) -> torch.Tensor:
    """(C, H, W) logits -> (H, W) uint8 index of the largest (the first of equals, as argmax).

    On the CPU torch's argmax over the outer dimension is slow (153 ms for 12 x 120 x 3840 on the
    2-core CI machine, against 24 ms for this running maximum; docs/tiling.md), so there it is one
    pass per class; on a GPU argmax is one kernel.
    """
    if logits.device.type != "cpu":
        return logits.argmax(dim=0).to(torch.uint8)
    best = logits[0].clone()
    classes = torch.zeros(logits.shape[1:], dtype=torch.uint8)
    for index in range(1, logits.shape[0]):
        better = logits[index] > best
        torch.maximum(best, logits[index], out=best)
        classes.masked_fill_(better, index)
    return classes


def max_probability_u8(logits: torch.Tensor, dim: int) -> torch.Tensor:
    """Maximum softmax probability along ``dim`` x 255, rounded to uint8 (runtime/host.py's numpy twin)."""
    top = logits.amax(dim=dim, keepdim=True)
    total = torch.exp(logits - top).sum(dim=dim)
    return (255.0 / total).round_().clamp_(0, 255).to(torch.uint8)


def _numpy(tensor: torch.Tensor | None) -> np.ndarray | None:
    return None if tensor is None else tensor.numpy()


def _to_pinned_host(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """Start an asynchronous copy into page-locked memory (torch's caching host allocator reuses it)."""
    if tensor is None:
        return None
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host
