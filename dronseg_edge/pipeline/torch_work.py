"""The Segmenter's work with torch: pre/post-processing on the model's device (a GPU above all).

Used for checkpoints, and for ``.onnx``/``.engine`` files of plain tensors on a GPU when torch is
installed: colour conversion, resizing and normalisation run on the GPU, so only uint8 frames go
up and only the uint8 class map (and the overlay, when asked for) comes down, through pinned
memory. With logits and a GPU, the logits are upsampled bilinearly and then argmax-ed (smoother
edges, a fraction of a millisecond on a GPU); on the CPU that costs far more than the model
(docs/facts.md#pipeline-timings), so there the class map is resized (nearest) instead.
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
from dronseg_edge.pipeline.sources import FrameRecord
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
        out = {}
        for i in range(1, len(self.marks)):
            before, after = self.marks[i - 1], self.marks[i]
            out[self.names[i]] = before.elapsed_time(after) if self.cuda else (after - before) * 1e3
        return out


@dataclass
class TorchPending:
    records: list[FrameRecord]
    masks: list[torch.Tensor]  # (H, W) uint8, on the host (pinned on CUDA)
    counts: list[torch.Tensor]  # (C,) pixel counts on the host
    overlays: list[torch.Tensor | None]
    clock: _StageClock

    def finish(self) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray | None], list[None], dict[str, float]]:
        """Wait for the device; (masks, counts, overlays, confidences, ms per stage for the whole batch)."""
        self.clock.wait()
        return ([m.numpy() for m in self.masks], [c.numpy() for c in self.counts],
                [None if o is None else o.numpy() for o in self.overlays], [None] * len(self.masks), self.clock.elapsed_ms())


class TorchWork:
    """Submits batches to ``backend`` with torch pre/post on ``device``; results are collected later
    (on a GPU the next batch is queued before the previous one is collected)."""

    name = "torch"

    def __init__(self, backend: Backend, info: ModelInfo, device, infer_batch: int, upsample_logits: bool):
        self.backend, self.info, self.infer_batch = backend, info, infer_batch
        self.device = as_torch_device(device)
        self.upsample_logits = upsample_logits
        self._palette: torch.Tensor | None = None
        self._staging = HostStaging(self.device) if self.device.type == "cuda" else None

    @torch.inference_mode()
    def submit(self, records: list[FrameRecord], overlay_alpha: float | None) -> TorchPending:
        clock = _StageClock(self.device)
        on_cuda = self.device.type == "cuda"
        if on_cuda:  # through pinned buffers: from pageable memory a "non_blocking" copy blocks the host
            frames = [self._staging.upload(r.frame) for r in records]
        else:
            frames = [torch.from_numpy(np.ascontiguousarray(r.frame)) for r in records]
        # Antialiased when shrinking, as training's INTER_AREA and the host work's resize are.
        batch = torch.cat([preprocess(f, self.info, self.device, antialias=True) for f in frames])
        batch, _ = pad_batch(batch, self.infer_batch)
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
        return TorchPending(records, masks, counts, overlays, clock)

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


def _to_pinned_host(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """Start an asynchronous copy into page-locked memory (torch's caching host allocator reuses it)."""
    if tensor is None:
        return None
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    return host
