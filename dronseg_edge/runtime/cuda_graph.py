"""CUDA-graph capture and replay for the PyTorch backend, each cache on a stream of its own.

Own stream: torch's current stream is shared by the whole process (by default the legacy stream,
which serialises with every other), and its default capture stream is one per process, so two
backends capturing at once would capture into each other. Captures are ``thread_local`` (another
thread's ordinary CUDA calls do not invalidate them) and one at a time in the process
(``cuda_runtime.CAPTURE_LOCK``, which the TensorRT backend takes too): torch's graph context
synchronises the device and empties the allocator's cache on entry. The lock covers the warm-up as
well: cuDNN's benchmark cache is per thread (ATen's Conv_v8.cpp), and the autotuner's
``cudaDeviceSynchronize()`` breaks a capture in progress in any mode (NVIDIA/TensorRT#2888). Not
covered: eager autotuning in another thread (no CUDA graphs, ``cudnn.benchmark`` on) while a capture
runs; that capture fails and its model runs eagerly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch

from dronseg_edge.runtime.cuda_runtime import CAPTURE_LOCK

log = logging.getLogger(__name__)


def keep_for_stream(tensor, stream) -> None:
    """Tell the caching allocator ``tensor`` is used on ``stream``, so its memory is not reused before that work ends."""
    if isinstance(tensor, torch.Tensor) and tensor.device.type == "cuda":
        tensor.record_stream(stream)


@dataclass
class CapturedGraph:
    graph: object  # torch.cuda.CUDAGraph
    input: torch.Tensor  # the fixed buffer the graph reads: replay copies each new input into it
    output: torch.Tensor  # the fixed buffer the graph writes on every replay


class GraphCache(dict):
    """Captured CUDA graphs (``CapturedGraph``) by key (usually the input shape), at most ``max_graphs``
    (each holds its own activation memory; the oldest are dropped together when full), on a stream of
    its own made on first use. ``label`` names the model in the warning a failed capture logs.
    """

    def __init__(self, device: torch.device, max_graphs: int = 4, label: str = "model"):
        super().__init__()
        self.device, self._stream, self.max_graphs, self.label = device, None, max_graphs, label

    @property
    def stream(self):
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        return self._stream

    def capture(self, key, source: torch.Tensor, forward: Callable[[torch.Tensor], torch.Tensor], *,
                warmup: int = 1) -> CapturedGraph | None:
        """Capture ``forward`` of a fixed input buffer (filled from ``source``) for ``key``; None (with a warning)
        when it cannot, so the caller runs eagerly. ``forward`` runs ``warmup`` times first on a side stream
        (cudnn.benchmark picks its kernels there)."""
        stream = self.stream
        with torch.cuda.device(self.device):
            current = torch.cuda.current_stream(self.device)
            stream.wait_stream(current)
            # The warm-up runs under the lock too: cuDNN's benchmark cache is per thread, so a new
            # thread autotunes here, and the autotuner's cudaDeviceSynchronize() would break a capture
            # running meanwhile in another thread, whatever its capture mode.
            with CAPTURE_LOCK:
                try:
                    fixed, output, graph = self._warm_up_and_capture(stream, source, forward, warmup)
                except RuntimeError as exc:  # e.g. an op or plugin that synchronises: eager beats failing
                    reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
                    log.warning("CUDA graph capture failed (%s); running %s without it", reason, self.label)
                    # Only this stream: a device-wide synchronize would break another thread's capture.
                    stream.synchronize()
                    self.clear()
                    return None
            keep_for_stream(source, stream)
        if len(self) >= self.max_graphs:
            self.clear()
        self[key] = CapturedGraph(graph, fixed, output)
        return self[key]

    def _warm_up_and_capture(self, stream, source, forward, warmup: int):
        """(fixed input, output buffer, graph): ``forward`` warmed up on a side stream, then captured on ``stream``."""
        with torch.cuda.stream(stream):  # the fixed buffer belongs to this stream, like every replay
            fixed = torch.empty(source.shape, dtype=source.dtype, device=self.device).copy_(source)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(stream)
        try:
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    forward(fixed)
        finally:
            stream.wait_stream(side)  # also after a failure: the stream's synchronize then covers the warm-up
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            output = forward(fixed)
        return fixed, output, graph

    def replay(self, entry: CapturedGraph, source: torch.Tensor) -> torch.Tensor:
        """Copy ``source`` into the graph's input, replay it on the owner's stream, return a copy of its output.

        Queued after the work already on the caller's current stream (which made ``source``) and before
        any the caller queues afterwards (which reads the result)."""
        stream = self.stream
        with torch.cuda.device(self.device):
            current = torch.cuda.current_stream(self.device)
            stream.wait_stream(current)
            with torch.cuda.stream(stream):
                entry.input.copy_(source, non_blocking=True)
                entry.graph.replay()
                out = entry.output.clone()  # every replay writes the same buffer: a copy keeps earlier results
            current.wait_stream(stream)
            keep_for_stream(source, stream)
            keep_for_stream(out, current)
            return out
