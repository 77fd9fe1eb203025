"""The measurement harness: warm up, then time ``Backend.infer`` iteration by iteration.

On a GPU every iteration is timed with CUDA events on the current stream (as trtexec does):
host-to-device copy of the float32 input, compute, device-to-host copy of the output, then a
synchronise, so each sample is the latency of one batch on an otherwise idle GPU (kernel-launch
gaps included, which is what a frame-by-frame video pipeline sees). The copies are always timed;
``include_transfers`` decides whether the latency counts them. On the CPU nothing crosses a bus and
``time.perf_counter`` times the compute alone.

Backends must run on torch's current CUDA stream or synchronise before ``infer`` returns (the
PyTorch, ONNX Runtime IO-binding and TensorRT runners all do); the host wall-clock time per
iteration is kept as a cross-check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from dronseg_edge.bench.stats import LatencyStats, summarize
from dronseg_edge.errors import DronsegError
from dronseg_edge.runtime.base import Backend

DEFAULT_MIN_ITERS = 20  # with neither --iters nor --duration-s: at least 20 iterations and 3 s (like trtexec)
DEFAULT_MIN_SECONDS = 3.0
DEFAULT_WARMUP_S = 1.0


@dataclass(frozen=True)
class TimingSettings:
    """How long to warm up and measure.

    Warm-up runs ``warmup_iters`` calls when given, else for ``warmup_s`` seconds; at least one
    untimed call always runs (it allocates the output buffers). Measurement runs exactly ``iters``
    iterations, or for ``duration_s`` seconds, or, with both, until both are reached.
    """

    warmup_s: float = DEFAULT_WARMUP_S
    warmup_iters: int | None = None
    iters: int | None = None
    duration_s: float | None = None
    include_transfers: bool = False

    def __post_init__(self) -> None:
        if not np.isfinite(self.warmup_s) or self.warmup_s < 0:
            raise DronsegError(f"--warmup-s {self.warmup_s} must be 0 or more seconds")
        if self.warmup_iters is not None and self.warmup_iters < 0:
            raise DronsegError(f"--warmup-iters {self.warmup_iters} must be 0 or more")
        if self.iters is not None and self.iters < 1:
            raise DronsegError(f"--iters {self.iters} must be at least 1 (or use --duration-s SECONDS)")
        if self.duration_s is not None and (not np.isfinite(self.duration_s) or self.duration_s <= 0):
            raise DronsegError(f"--duration-s {self.duration_s} must be more than 0 seconds")

    def bounds(self) -> tuple[int, float]:
        """(minimum iterations, minimum seconds) of the measurement loop."""
        if self.iters is None and self.duration_s is None:
            return DEFAULT_MIN_ITERS, DEFAULT_MIN_SECONDS
        return (self.iters or 1), (self.duration_s or 0.0)

    def to_dict(self) -> dict[str, Any]:
        min_iters, min_seconds = self.bounds()
        return {"warmup_s": self.warmup_s, "warmup_iters": self.warmup_iters, "iters": self.iters,
                "duration_s": self.duration_s, "min_iters": min_iters, "min_seconds": min_seconds,
                "include_transfers": self.include_transfers}


@dataclass
class Measurement:
    """Per-iteration statistics (ms). ``h2d``/``d2h`` are None on the CPU."""

    latency: LatencyStats  # compute, or h2d + compute + d2h with include_transfers
    compute: LatencyStats
    h2d: LatencyStats | None
    d2h: LatencyStats | None
    host_wall: LatencyStats  # perf_counter around a whole iteration, synchronise included
    timer: str  # "cuda-events" or "perf_counter"
    warmup_iters: int
    warmup_s: float
    measure_s: float
    include_transfers: bool
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


class _Iteration:
    """One timed call: returns (h2d_ms, compute_ms, d2h_ms, wall_ms); h2d/d2h are None on the CPU."""

    def __init__(self, backend: Backend, batch_host: torch.Tensor):
        self.backend = backend
        self.cuda = backend.device.type == "cuda"
        if self.cuda:
            self.stream = torch.cuda.current_stream(backend.device)
            self.x_host = batch_host.pin_memory()
            self.x_dev = torch.empty_like(batch_host, device=backend.device)
            self.x_dev.copy_(self.x_host)
        else:
            self.x_dev = batch_host.to(backend.device)
        self.out_host: torch.Tensor | None = None
        self.last_output: torch.Tensor | None = None

    def __call__(self) -> tuple[float | None, float, float | None, float]:
        return self._cuda() if self.cuda else self._cpu()

    def _cpu(self) -> tuple[None, float, None, float]:
        start = time.perf_counter()
        self.last_output = self.backend.infer(self.x_dev)
        ms = (time.perf_counter() - start) * 1e3
        return None, ms, None, ms

    def _cuda(self) -> tuple[float, float, float, float]:
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


def measure(backend: Backend, batch_host: torch.Tensor, settings: TimingSettings,
            progress: Callable[[int], None] | None = None) -> Measurement:
    """Warm up and time ``backend.infer`` on ``batch_host`` (float32 (N, 3, H, W), on the host).

    The backend is activated here if it is not yet. Returns statistics in milliseconds.
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
        timer="cuda-events" if step.cuda else "perf_counter",
        warmup_iters=warmup_iters,
        warmup_s=warmup_s,
        measure_s=measure_s,
        include_transfers=bool(settings.include_transfers and h2d),
        output_shape=list(out.shape) if out is not None else [],
        output_dtype=str(out.dtype).replace("torch.", "") if out is not None else "",
    )
