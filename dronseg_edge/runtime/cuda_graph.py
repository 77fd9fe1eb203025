"""CUDA-graph capture and replay, and work on a backend's own stream: shared by the PyTorch and
TensorRT backends.

Why a backend runs on its own stream: torch's current stream of a device is shared by everything
in the process (and by default it is the legacy default stream, which serialises with every other
stream), and the graph capture stream torch uses by default is one per process, so two backends
capturing at once, or on two GPUs, would capture into each other. Each ``GraphCache`` captures on
its own stream with ``capture_error_mode="thread_local"`` (another thread's ordinary CUDA calls do
not invalidate the capture) and one capture at a time per process (``_CAPTURE_LOCK``): torch's graph
context synchronises the device and empties the allocator's cache on entry, which must not happen
in the middle of another thread's capture. The lock is taken before the warm-up runs: cuDNN's
benchmark cache is per thread (ATen's Conv_v8.cpp), so every new thread autotunes in its warm-up,
and the autotuner calls ``cudaDeviceSynchronize()``, which breaks a capture in progress on the GPU
in any capture mode (NVIDIA/TensorRT#2888). A failed capture synchronises only its own stream.
What the lock cannot cover: eager work of another thread that autotunes (a backend without CUDA
graphs, ``cudnn.benchmark`` on) while a capture runs; such a capture fails and runs eagerly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from dronseg_edge.runtime.cuda_runtime import CAPTURE_LOCK

log = logging.getLogger(__name__)

_CAPTURE_LOCK = CAPTURE_LOCK  # one lock for torch's captures and the TensorRT backend's (cuda_runtime.capture)
Launch = Callable[[], torch.Tensor]


def keep_for_stream(tensor, stream) -> None:
    """Tell the caching allocator ``tensor`` is used on ``stream``, so its memory is not reused before that work ends."""
    if isinstance(tensor, torch.Tensor) and tensor.device.type == "cuda":
        tensor.record_stream(stream)


def run_on(stream, device: torch.device, fn: Callable[[], torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
    """``fn()`` queued on ``stream``: after the work already on the caller's current stream (which
    produced ``inputs``), and before any work the caller queues afterwards (which reads the result)."""
    current = torch.cuda.current_stream(device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        out = fn()
    current.wait_stream(stream)
    for tensor in inputs:
        keep_for_stream(tensor, stream)
    keep_for_stream(out, current)
    return out


@dataclass
class CapturedGraph:
    graph: object  # torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]  # the fixed buffers the graph reads: replay copies new inputs into them
    output: torch.Tensor  # the fixed buffer the graph writes on every replay


class GraphCache:
    """Captured CUDA graphs by key (usually the input shape), at most ``max_graphs`` (each holds its
    own activation memory; the oldest are dropped together when full).

    ``stream``: the owner's stream (one is made on first use when None). ``label`` names the model in
    the warning a failed capture logs.
    """

    def __init__(self, device: torch.device, stream=None, max_graphs: int = 4, label: str = "model"):
        self.device = device
        self._stream = stream
        self.max_graphs = max_graphs
        self.label = label
        self._graphs: dict[tuple, CapturedGraph] = {}

    @property
    def stream(self):
        if self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        return self._stream

    def __len__(self) -> int:
        return len(self._graphs)

    def __contains__(self, key) -> bool:
        return key in self._graphs

    def get(self, key) -> CapturedGraph | None:
        return self._graphs.get(key)

    def clear(self) -> None:
        self._graphs.clear()

    def capture(self, key, sources: Sequence[torch.Tensor], prepare: Callable[[tuple[torch.Tensor, ...]], Launch], *,
                warmup: int = 1, dtype: torch.dtype | None = None) -> CapturedGraph | None:
        """Capture one graph for ``key``; None (with a warning) when it cannot, so the caller runs eagerly.

        Fixed input buffers (``dtype``, default each source's) are filled from ``sources``;
        ``prepare(inputs)`` returns the launch to capture, which returns the output buffer. The launch
        runs ``warmup`` times first on a side stream (cudnn.benchmark picks its kernels there;
        TensorRT applies deferred shape/address updates in its first enqueue, which must not happen
        during capture).
        """
        stream = self.stream
        with torch.cuda.device(self.device):
            current = torch.cuda.current_stream(self.device)
            stream.wait_stream(current)
            # The warm-up runs under the lock too: cuDNN's benchmark cache is per thread, so a new
            # thread autotunes here, and the autotuner's cudaDeviceSynchronize() would break a capture
            # running meanwhile in another thread, whatever its capture mode.
            with _CAPTURE_LOCK:
                try:
                    inputs, output, graph = self._warm_up_and_capture(stream, sources, prepare, warmup, dtype)
                except RuntimeError as exc:  # e.g. an op or plugin that synchronises: eager beats failing
                    reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
                    log.warning("CUDA graph capture failed (%s); running %s without it", reason, self.label)
                    # Only this stream: a device-wide synchronize would break another thread's capture.
                    stream.synchronize()
                    self.clear()
                    return None
            for source in sources:
                keep_for_stream(source, stream)
        if len(self._graphs) >= self.max_graphs:
            self._graphs.clear()
        self._graphs[key] = CapturedGraph(graph, inputs, output)
        return self._graphs[key]

    def _warm_up_and_capture(self, stream, sources, prepare, warmup: int, dtype):
        """(fixed inputs, output buffer, graph): the launch warmed up on a side stream, then captured on ``stream``."""
        with torch.cuda.stream(stream):  # the fixed buffers belong to this stream, like every replay
            inputs = tuple(torch.empty(s.shape, dtype=dtype or s.dtype, device=self.device).copy_(s) for s in sources)
            launch = prepare(inputs)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(stream)
        try:
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    launch()
        finally:
            stream.wait_stream(side)  # also after a failure: the stream's synchronize then covers the warm-up
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
            output = launch()
        return inputs, output, graph

    def replay(self, entry: CapturedGraph, *sources: torch.Tensor) -> torch.Tensor:
        """Copy ``sources`` into the graph's inputs, replay it on the owner's stream, return a copy of its output."""

        def launch() -> torch.Tensor:
            for fixed, source in zip(entry.inputs, sources):
                fixed.copy_(source, non_blocking=True)
            entry.graph.replay()
            # Every replay writes the same buffer: a copy keeps earlier results intact.
            return entry.output.clone()

        with torch.cuda.device(self.device):
            return run_on(self.stream, self.device, launch, *sources)
