"""The measurement harness: warm up, then time ``Backend.infer`` iteration by iteration.

The timer follows the kind of device the backend was given (``bench.run.resolve_bench_device``) and the
arrays it takes (``Backend.native``):

- **a checkpoint on a torch device on a GPU**: CUDA events on torch's current stream, as trtexec does: host-to-device
  copy into a device-resident input, compute, device-to-host copy, then a synchronise, so each sample
  is one batch on an idle GPU (launch gaps included). ``include_transfers`` decides whether the
  latency counts the copies; torch is needed for the stream and the device-resident tensors.
- **anything else** (the CPU; ONNX Runtime and TensorRT, which take host arrays; a GPU without a CUDA
  torch): ``perf_counter`` around ``infer`` on the host array. On a GPU the backend uploads, runs,
  downloads and synchronises before it returns, so the latency includes the copies
  (``Measurement.include_transfers`` is True).

Backends run on torch's current CUDA stream or synchronise before ``infer`` returns; the host wall
time per iteration is kept as a cross-check.
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from dronseg_edge.bench.options import TimingSettings  # imported from here too
from dronseg_edge.bench.stats import LatencyStats, summarize
from dronseg_edge.runtime.base import Backend, dtype_name

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


def timer_name(device: Any, native: str = "torch") -> str:
    """'cuda-events' (a torch device on a GPU, for a backend that takes torch tensors: a checkpoint) or
    'perf_counter': the timer :func:`measure` uses on ``device`` for a backend whose arrays are ``native``.
    ONNX Runtime and TensorRT take host arrays: events around them would time their copies as compute."""
    torch_device = type(device).__module__.startswith("torch")  # told without importing torch
    return "cuda-events" if device.type == "cuda" and torch_device and native == "torch" else "perf_counter"


def host_timed_gpu(device: Any, native: str = "torch") -> bool:
    """A GPU timed on the host (no CUDA torch, or a backend of host arrays): the latency includes the copies."""
    return device.type == "cuda" and timer_name(device, native) == "perf_counter"


def _host_step(backend: Backend, x: Any) -> Callable[[], tuple]:
    """One timed call on the host: (None, compute_ms, None, wall_ms, output)."""

    def step() -> tuple:
        start = time.perf_counter()
        out = backend.infer(x)
        ms = (time.perf_counter() - start) * 1e3
        return None, ms, None, ms, out

    return step


def _cuda_step(backend: Backend, batch_host: Any) -> Callable[[], tuple]:
    """One call timed with CUDA events: (h2d_ms, compute_ms, d2h_ms, wall_ms, output)."""
    import torch

    stream = torch.cuda.current_stream(backend.device)
    x_host = torch.as_tensor(batch_host).pin_memory()  # numpy (make_input) shares its memory, no copy
    x_dev = torch.empty_like(x_host, device=backend.device)
    x_dev.copy_(x_host)
    out_host = [None]

    def step() -> tuple:
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        wall_start = time.perf_counter()
        events[0].record(stream)
        x_dev.copy_(x_host, non_blocking=True)
        events[1].record(stream)
        out = backend.infer(x_dev)
        events[2].record(stream)
        if out_host[0] is None or out_host[0].shape != out.shape or out_host[0].dtype != out.dtype:
            # Only the first (untimed) call gets here: pinned allocation is slow and must not be measured.
            torch.cuda.synchronize(backend.device)
            out_host[0] = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
        out_host[0].copy_(out, non_blocking=True)
        events[3].record(stream)
        events[3].synchronize()  # elapsed_time is only valid once both events have completed
        wall = (time.perf_counter() - wall_start) * 1e3
        return (*(events[i].elapsed_time(events[i + 1]) for i in range(3)), wall, out)

    return step


def measure(backend: Backend, batch_host: Any, settings: TimingSettings) -> Measurement:
    """Warm up and time ``backend.infer`` on ``batch_host`` (float32 (N, 3, H, W) in host memory, numpy or torch;
    (N, H, W, 3) uint8 frames for a frames artifact); activates the backend if needed. Statistics in ms."""
    if not backend.active:
        backend.activate()
        backend.active = True
    timer = timer_name(backend.device, backend.native)
    cuda = timer == "cuda-events"
    if cuda:
        step = _cuda_step(backend, batch_host)
    elif backend.native == "torch" and type(backend.device).__module__.startswith("torch"):  # a checkpoint on the CPU
        import torch

        step = _host_step(backend, torch.as_tensor(batch_host).to(backend.device))
    else:
        step = _host_step(backend, np.asarray(batch_host))  # host memory: the backend uploads it itself on a GPU

    warm_start = time.perf_counter()
    warmup_iters, out = 0, None
    while warmup_iters == 0 or (warmup_iters < settings.warmup_iters if settings.warmup_iters is not None
                                else time.perf_counter() - warm_start < settings.warmup_s):
        out = step()[-1]
        warmup_iters += 1
    warmup_s = time.perf_counter() - warm_start

    min_iters, min_seconds = settings.bounds()
    # h2d, compute, d2h, wall (ms) per iteration: 32 bytes each (--duration-s 3600 at 1 ms: 115 MB), where lists of
    # floats took ten times that; a host step has no transfers (None, kept as 0)
    columns = [array("d") for _ in range(4)]
    start = time.perf_counter()
    while len(columns[1]) < min_iters or time.perf_counter() - start < min_seconds:
        *times, out = step()
        for column, ms in zip(columns, times):
            column.append(ms or 0.0)
    measure_s = time.perf_counter() - start
    h2d, compute, d2h, wall = map(np.frombuffer, columns)

    batch = int(batch_host.shape[0])
    if cuda and settings.include_transfers:
        latency_samples = np.asarray(h2d) + np.asarray(compute) + np.asarray(d2h)
    else:
        latency_samples = np.asarray(compute)
    return Measurement(
        latency=summarize(latency_samples, batch),
        compute=summarize(compute, batch),
        h2d=summarize(h2d, batch) if cuda else None,
        d2h=summarize(d2h, batch) if cuda else None,
        host_wall=summarize(wall, batch),
        timer=timer,
        warmup_iters=warmup_iters,
        warmup_s=warmup_s,
        measure_s=measure_s,
        include_transfers=bool(settings.include_transfers and cuda) or host_timed_gpu(backend.device, backend.native),
        output_shape=list(out.shape) if out is not None else [],
        output_dtype=dtype_name(out) if out is not None else "",
    )
