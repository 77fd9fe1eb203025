"""The measurement harness: warm up, then time ``Backend.infer`` iteration by iteration.

Two paths, chosen by the kind of device the backend was given (``bench.run.resolve_bench_device``
chooses it):

- **torch device on a GPU** (checkpoints, ``--matrix``, and ``.onnx``/``.engine`` files on a GPU
  where torch with CUDA is installed): every iteration is timed with CUDA events on torch's current
  stream (as trtexec does): host-to-device copy of the float32 input into a device-resident
  tensor, compute, device-to-host copy of the output, then a synchronise, so each sample is the
  latency of one batch on an otherwise idle GPU (kernel-launch gaps included, which is what a
  frame-by-frame video pipeline sees). The copies are always timed; ``include_transfers`` decides
  whether the latency counts them. Events recorded around a device-resident input need torch's
  stream and tensors: that is why this path keeps torch.
- **host path** (the CPU, or a GPU without a CUDA torch: a torch-free ``devices.Device``): the
  numpy batch goes to ``infer`` and ``time.perf_counter`` times the call. Nothing else is imported.
  On the CPU nothing crosses a bus, so this is the compute alone. On a GPU the backend uploads the
  host array, runs, downloads and synchronises before it returns numpy, so the latency *includes*
  the host<->device copies whatever ``include_transfers`` says (``Measurement.include_transfers``
  is then True, and ``bench.run`` adds a note saying so).
  A torch device on the CPU (a checkpoint) is timed the same way with a torch tensor.

Backends must run on torch's current CUDA stream or synchronise before ``infer`` returns (the
PyTorch, ONNX Runtime IO-binding and TensorRT runners all do); the host wall-clock time per
iteration is kept as a cross-check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from dronseg_edge.bench.options import TimingSettings  # imported from here too
from dronseg_edge.bench.stats import LatencyStats, summarize
from dronseg_edge.runtime.base import Backend
from dronseg_edge.runtime.batching import dtype_name

if TYPE_CHECKING:
    import torch

@dataclass
class Measurement:
    """Per-iteration statistics (ms). ``h2d``/``d2h`` are None on the host path (timer perf_counter)."""

    latency: LatencyStats  # compute, or h2d + compute + d2h with include_transfers (host-timed GPU: copies in it)
    compute: LatencyStats
    h2d: LatencyStats | None
    d2h: LatencyStats | None
    host_wall: LatencyStats  # perf_counter around a whole iteration, synchronise included
    timer: str  # "cuda-events" or "perf_counter"
    warmup_iters: int
    warmup_s: float
    measure_s: float
    include_transfers: bool  # whether ``latency`` counts host<->device copies
    output_shape: list[int] = field(default_factory=list)
    output_dtype: str = ""

    def to_dict(self) -> dict[str, Any]:
        stages = {name: (s.to_dict() if s is not None else None)
                  for name, s in (("h2d", self.h2d), ("compute", self.compute), ("d2h", self.d2h))}
        return {"timer": self.timer, "include_transfers": self.include_transfers,
                "warmup_iters": self.warmup_iters, "warmup_s": round(self.warmup_s, 4),
                "measure_s": round(self.measure_s, 4), "latency_ms": self.latency.to_dict(),
                "stages_ms": stages, "host_wall_ms": self.host_wall.to_dict(),
                "output_shape": self.output_shape, "output_dtype": self.output_dtype}


def is_torch_device(device: Any) -> bool:
    """True for a ``torch.device`` (told without importing torch), False for a ``devices.Device``."""
    return type(device).__module__.split(".")[0] == "torch"


def uses_cuda_events(device: Any) -> bool:
    """Whether a backend on ``device`` is timed with CUDA events (a torch device on a GPU; see the module doc)."""
    return device.type == "cuda" and is_torch_device(device)


def timer_name(device: Any) -> str:
    """'cuda-events' or 'perf_counter': the timer :func:`measure` uses for a backend on ``device``."""
    return "cuda-events" if uses_cuda_events(device) else "perf_counter"


def host_timed_gpu(device: Any) -> bool:
    """A GPU timed on the host (no CUDA torch): the latency includes the host<->device copies."""
    return device.type == "cuda" and not uses_cuda_events(device)


class _Iteration:
    """One timed call: returns (h2d_ms, compute_ms, d2h_ms, wall_ms); h2d/d2h are None on the host path."""

    def __init__(self, backend: Backend, batch_host: "np.ndarray | torch.Tensor"):
        self.backend = backend
        self.cuda = uses_cuda_events(backend.device)
        if is_torch_device(backend.device):
            import torch

            batch_host = torch.as_tensor(batch_host)  # numpy (make_input) shares its memory, no copy
            if self.cuda:
                self.stream = torch.cuda.current_stream(backend.device)
                self.x_host = batch_host.pin_memory()
                self.x_dev = torch.empty_like(batch_host, device=backend.device)
                self.x_dev.copy_(self.x_host)
            else:
                self.x_dev = batch_host.to(backend.device)
        else:
            self.x_dev = batch_host  # host memory: the backend uploads it itself on a GPU
        self.out_host = None
        self.last_output = None

    def __call__(self) -> tuple[float | None, float, float | None, float]:
        return self._cuda() if self.cuda else self._host()

    def _host(self) -> tuple[None, float, None, float]:
        start = time.perf_counter()
        self.last_output = self.backend.infer(self.x_dev)
        ms = (time.perf_counter() - start) * 1e3
        return None, ms, None, ms

    def _cuda(self) -> tuple[float, float, float, float]:
        import torch

        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        wall_start = time.perf_counter()
        events[0].record(self.stream)
        self.x_dev.copy_(self.x_host, non_blocking=True)
        events[1].record(self.stream)
        out = self.backend.infer(self.x_dev)
        events[2].record(self.stream)
        if self.out_host is None or self.out_host.shape != out.shape or self.out_host.dtype != out.dtype:
            # Only the first (untimed) call gets here: pinned allocation is slow and must not be measured.
            torch.cuda.synchronize(self.backend.device)
            self.out_host = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        self.out_host.copy_(out, non_blocking=True)
        events[3].record(self.stream)
        events[3].synchronize()  # elapsed_time is only valid once both events have completed
        wall = (time.perf_counter() - wall_start) * 1e3
        self.last_output = out
        return (events[0].elapsed_time(events[1]), events[1].elapsed_time(events[2]),
                events[2].elapsed_time(events[3]), wall)


def measure(backend: Backend, batch_host: "np.ndarray | torch.Tensor", settings: TimingSettings,
            progress: Callable[[int], None] | None = None) -> Measurement:
    """Warm up and time ``backend.infer`` on ``batch_host`` (float32 (N, 3, H, W) in host memory, numpy or torch;
    (N, H, W, 3) uint8 frames for a frames artifact).

    The backend is activated here if it is not yet. Returns statistics in milliseconds. The timer
    follows ``backend.device`` (see the module doc): CUDA events for a torch device on a GPU,
    ``perf_counter`` otherwise, where a GPU's latency includes the host<->device copies.
    """
    if not backend.active:
        backend.activate()
        backend.active = True
    step = _Iteration(backend, batch_host)

    warm_start = time.perf_counter()
    warmup_iters = 0
    while True:
        step()
        warmup_iters += 1
        elapsed = time.perf_counter() - warm_start
        if settings.warmup_iters is not None:
            if warmup_iters >= settings.warmup_iters:
                break
        elif elapsed >= settings.warmup_s:
            break
    warmup_s = time.perf_counter() - warm_start

    min_iters, min_seconds = settings.bounds()
    h2d, compute, d2h, wall = [], [], [], []
    start = time.perf_counter()
    while len(compute) < min_iters or time.perf_counter() - start < min_seconds:
        t_h2d, t_compute, t_d2h, t_wall = step()
        compute.append(t_compute)
        wall.append(t_wall)
        if t_h2d is not None:
            h2d.append(t_h2d)
            d2h.append(t_d2h)
        if progress is not None:
            progress(len(compute))
    measure_s = time.perf_counter() - start

    batch = int(batch_host.shape[0])
    if h2d and settings.include_transfers:
        latency_samples = np.asarray(h2d) + np.asarray(compute) + np.asarray(d2h)
    else:
        latency_samples = np.asarray(compute)
    out = step.last_output
    return Measurement(
        latency=summarize(latency_samples, batch),
        compute=summarize(compute, batch),
        h2d=summarize(h2d, batch) if h2d else None,
        d2h=summarize(d2h, batch) if d2h else None,
        host_wall=summarize(wall, batch),
        timer=timer_name(backend.device),
        warmup_iters=warmup_iters,
        warmup_s=warmup_s,
        measure_s=measure_s,
        include_transfers=bool(settings.include_transfers and h2d) or host_timed_gpu(backend.device),
        output_shape=list(out.shape) if out is not None else [],
        output_dtype=dtype_name(out) if out is not None else "",
    )
