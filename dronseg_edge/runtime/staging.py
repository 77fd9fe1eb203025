"""Host-to-device uploads of frames through reusable page-locked (pinned) buffers.

A ``non_blocking`` copy from ordinary (pageable) host memory is not asynchronous: CUDA first copies
it through a driver buffer and the host waits for the whole transfer. From pinned memory the copy
is a DMA the host only queues. Pinning is slow (a syscall per allocation), so buffers are kept and
reused: per dtype a small ring of them, each grown to the largest frame it has held.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dronseg_edge.runtime.cuda_graph import keep_for_stream


@dataclass(eq=False)
class _Slot:
    buffer: torch.Tensor  # flat host buffer (pinned on CUDA)
    copied: object = None  # torch.cuda.Event after the last copy out of ``buffer``, None when none is in flight

    def ready(self) -> bool:
        return self.copied is None or self.copied.query()


class HostStaging:
    """Uploads host arrays to ``device`` through pinned staging buffers; not thread-safe.

    The copies run on a copy stream of their own, so an upload does not queue behind the inference
    already queued on the current stream (the Segmenter uploads batch N+1 while batch N runs); the
    current stream waits for the copy (an event), not the host. A buffer is overwritten only once
    its previous copy has finished: a busy one is skipped for a free or new one (up to ``slots``
    per dtype), and only when all are busy does the host wait for the oldest.
    ``pin``: page-lock the buffers (default: on CUDA only).
    """

    def __init__(self, device: torch.device, slots: int = 4, pin: bool | None = None):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"  # events and a copy stream; on the CPU plain copies
        self.pin = self.cuda if pin is None else bool(pin)
        self.max_slots = max(1, int(slots))
        self._rings: dict[torch.dtype, list[_Slot]] = {}
        self._next: dict[torch.dtype, int] = {}
        self._stream = None

    def buffers(self, dtype: torch.dtype = torch.uint8) -> list[torch.Tensor]:
        """The staging buffers of ``dtype`` (for inspection)."""
        return [slot.buffer for slot in self._rings.get(dtype, [])]

    def upload(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A new tensor on ``device`` with ``array``'s shape, dtype and values, ready for later work on the current stream."""
        if isinstance(array, torch.Tensor) and array.device.type != "cpu":
            return array.to(self.device, non_blocking=True)
        if isinstance(array, np.ndarray):  # any strides (a flipped view too): numpy copies them into the buffer
            shape, dtype = array.shape, torch.from_numpy(np.empty(0, dtype=array.dtype)).dtype
        else:
            shape, dtype = array.shape, array.dtype
        numel = int(np.prod(shape))
        slot = self._slot(dtype, numel)
        staged = slot.buffer[:numel].view(shape)
        if isinstance(array, np.ndarray):
            np.copyto(staged.numpy(), array)
        else:
            staged.copy_(array)
        if not self.cuda:
            return staged.clone() if self.device.type == "cpu" else staged.to(self.device)
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        current = torch.cuda.current_stream(self.device)
        # Allocated on the copy stream, so the copy need not wait for the current stream to free its memory.
        with torch.cuda.stream(self._stream):
            out = torch.empty(shape, dtype=dtype, device=self.device)
            out.copy_(staged, non_blocking=True)
            slot.copied = torch.cuda.Event()
            slot.copied.record(self._stream)
        current.wait_event(slot.copied)
        keep_for_stream(out, current)
        return out

    def _slot(self, dtype: torch.dtype, numel: int) -> _Slot:
        ring = self._rings.setdefault(dtype, [])
        start = self._next.get(dtype, 0)
        order = [ring[(start + i) % len(ring)] for i in range(len(ring))]
        slot = next((s for s in order if s.ready()), None)
        if slot is None and len(ring) < self.max_slots:
            slot = _Slot(self._alloc(dtype, numel))
            ring.append(slot)
        elif slot is None:  # every buffer still feeds a copy: wait for the oldest
            slot = order[0]
            slot.copied.synchronize()
        slot.copied = None
        if slot.buffer.numel() < numel:
            slot.buffer = self._alloc(dtype, numel)
        self._next[dtype] = (ring.index(slot) + 1) % len(ring)
        return slot

    def _alloc(self, dtype: torch.dtype, numel: int) -> torch.Tensor:
        # A normal tensor even under inference mode: an inference tensor could not be refilled by a
        # later upload outside it (the Segmenter uploads under inference mode, preprocess callers may not).
        with torch.inference_mode(False):
            return torch.empty(numel, dtype=dtype, pin_memory=self.pin)
