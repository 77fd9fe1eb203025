"""Benchmark one model file: choose the device (its kind picks the timer, ``bench/timing.py``), open its
backend with the requested options, check shapes, measure."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dronseg_edge.bench.timing import Measurement, TimingSettings, host_timed_gpu, measure
from dronseg_edge.devices import resolve_device, resolve_lean_device
from dronseg_edge.errors import BackendUnavailable, DronsegError
from dronseg_edge.machine import import_optional
from dronseg_edge.metadata import ModelInfo
from dronseg_edge.onnx_wire import external_data_locations
from dronseg_edge.option_fields import whole
from dronseg_edge.runtime.base import Backend
from dronseg_edge.runtime.host import CONFIDENCE_OUTPUT, preprocess_host
from dronseg_edge.runtime.registry import backend_class, is_checkpoint, load_backend
from dronseg_edge.sizes import format_size, parse_size

HOST_TIMED_GPU_NOTE = ("latency includes the host<->device copies: timed on the host (perf_counter), as the backend "
                       "takes host arrays (ONNX Runtime, TensorRT) or no CUDA build of torch is installed for CUDA events")


@dataclass
class BenchResult:
    """The latency of one model file with one set of options."""

    model: str
    backend: str
    provider: str
    arch: str
    precision: str
    head: str
    input_size: tuple[int, int]  # (width, height) in pixels
    batch: int
    cuda_graph: bool | None  # None: the backend has no CUDA-graph option
    file_mb: float
    measurement: Measurement
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def label(self) -> str:
        return Path(self.model).name

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "measurement"}
        return {**data, "model": os.path.abspath(self.model),  # the JSON is read from anywhere, as parity reports
                "input_size": format_size(self.input_size), **self.measurement.to_dict()}


def resolve_bench_device(name: str, models: Sequence[str | Path] = (), *, matrix: bool = False):
    """The device to measure ``models`` on, from ``--device``: a ``torch.device`` for a checkpoint, ``--matrix``
    or a GPU with a CUDA torch, else a torch-free ``devices.Device`` (its kind picks the timer)."""
    if matrix or any(is_checkpoint(model) for model in models):
        return resolve_device(name)
    device = resolve_lean_device(name)
    torch = import_optional("torch")[0] if device.type == "cuda" else None  # a broken torch counts as none
    return resolve_device(str(device)) if torch is not None and torch.cuda.is_available() else device


def artifact_size_mb(path: Path) -> float:
    """File size in MB (1e6 bytes), counting the external-data files an ONNX file reads (any names, once each)."""
    path = Path(path)
    external = {(path.parent / name).resolve() for name in external_data_locations(path)} \
        if path.suffix.lower() == ".onnx" else set()
    return (path.stat().st_size + sum(data.stat().st_size for data in external if data.is_file())) / 1e6


def open_backend(path: Path, device, *, precision: str | None = None,
                 cuda_graph: bool | None = None, **options) -> tuple[Backend, list[str]]:
    """The backend for ``path`` on ``device`` with only the options its class declares (``Backend.OPTIONS``), and
    notes: ``precision`` is for checkpoints only; a ``cuda_graph`` the backend lacks becomes a note."""
    cls = backend_class(path)
    accepted = cls.OPTIONS
    notes: list[str] = []
    if cuda_graph and device.type != "cuda":
        raise DronsegError(f"--cuda-graph needs a CUDA device, but {path} runs on {device}: drop --cuda-graph")
    if cls.name == "tensorrt" and device.type != "cuda":
        raise BackendUnavailable(f"TensorRT engine {path} runs on a CUDA GPU only, not on {device}: use --device cuda "
                                 "on the machine that built it")
    if precision is not None:
        if "precision" not in accepted:
            raise DronsegError(
                f"--precision applies to .pt checkpoints; {path} is an exported file with its own precision: "
                "drop --precision or export that precision with `dronseg-edge export`")
        options["precision"] = precision
    if cuda_graph is not None:
        if "cuda_graph" in accepted:
            options["cuda_graph"] = cuda_graph
        elif cuda_graph:
            notes.append(f"{cls.__name__} has no CUDA-graph option: measured without a CUDA graph")
    return load_backend(path, device, **options), notes


def resolve_shape(backend: Backend, size: tuple[int, int] | None, batch: int) -> tuple[int, int]:
    """The (width, height) to run at; raise DronsegError when a static artifact cannot take ``size``/``batch``."""
    info = backend.info
    frames = info.io == "frames"
    # the same kind of artifact again (a frames graph takes --source-size; its format, head, precision, model size and
    # confidence output kept)
    export = (f"dronseg-edge export {info.extra.get('source_checkpoint') or 'CHECKPOINT'}"
              + " --format engine" * (backend.path.suffix.lower() in (".engine", ".plan"))
              + f" --io frames --size {format_size(info.input_size)}" * frames
              + " --confidence" * (CONFIDENCE_OUTPUT in info.outputs)
              + " --head argmax" * (info.head == "argmax" and not frames) + f" --precision {info.precision}" * (info.precision != "fp32"))
    whole(batch, "--batch")  # 2.5: numpy's TypeError making the input
    size = None if size is None else parse_size(size)  # (0, 32) reached the model: "the torch backend failed"
    # what goes into the artifact: its frames for a frames graph, else its input tensor
    built = tuple(info.source_size if frames and info.source_size is not None else info.input_size)
    # the size and batch asked for, each else the file's own (export's defaults are the training size and batch 1)
    export += f" --{'source-' * frames}size {format_size(size or built)}" + f" --batch {batch}" * (batch != 1)
    if size is not None and tuple(size) != built and not info.dynamic:
        raise DronsegError(
            f"{backend.path} was built for {format_size(built)} (static shape) and cannot run at {format_size(size)}: "
            f"drop --size, or re-export at that size (`{export}`, or --dynamic)")
    if info.batch is not None and batch != info.batch:
        raise DronsegError(
            f"{backend.path} was built for batch {info.batch} and cannot run batch {batch}: use --batch {info.batch}, "
            f"or re-export with `{export}` (or --dynamic)")
    return tuple(size) if size is not None else built


def make_input(info: ModelInfo, size: tuple[int, int], batch: int, seed: int = 0) -> np.ndarray:
    """A reproducible batch of random uint8 frames at ``size`` (width, height): (batch, H, W, 3) for a frames
    artifact, else preprocessed as inference does (``runtime.host.preprocess_host``), float32 (batch, 3, H, W)."""
    width, height = size
    try:
        frames = np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
        if info.io == "frames":
            return frames
        return preprocess_host(frames, dataclasses.replace(info, input_size=(width, height)))
    except MemoryError:  # --batch 64 --size 3840x2160 on an 8 GB Jetson: 6.4 GB of float32 input
        raise DronsegError(f"not enough memory for an input of batch {batch} at {format_size(size)}: lower --batch "
                           "or --size") from None


@dataclass
class PreparedBench:
    """A constructed (not yet activated) backend whose shape has been checked: cheap to hold, quick to fail."""

    path: Path
    backend: Backend
    size: tuple[int, int]  # (width, height)
    batch: int
    cuda_graph: bool | None
    notes: list[str]


def prepare_bench(path: str | Path, device, *, size: tuple[int, int] | None = None, batch: int = 1,
                  precision: str | None = None, cuda_graph: bool | None = None,
                  backend_options: dict[str, Any] | None = None) -> PreparedBench:
    """Open ``path``'s backend and check that it can run ``size``/``batch``; raise DronsegError if not."""
    path, batch = Path(path), whole(batch, "--batch")  # before the model loads; np.int64(2) an int in the result
    backend, notes = open_backend(path, device, precision=precision, cuda_graph=cuda_graph, **(backend_options or {}))
    return PreparedBench(path, backend, resolve_shape(backend, size, batch), batch, cuda_graph, notes)


def run_prepared(prepared: PreparedBench, settings: TimingSettings) -> BenchResult:
    """Measure a prepared backend (activated here, deactivated afterwards)."""
    backend, device = prepared.backend, prepared.backend.device
    batch_host = make_input(backend.info, prepared.size, prepared.batch)
    try:
        measurement = measure(backend, batch_host, settings)
    finally:
        backend.deactivate()
    notes = list(prepared.notes)
    if settings.include_transfers and device.type != "cuda":
        notes.append("transfers: none on the CPU (input and output stay in host memory)")
    if host_timed_gpu(device, backend.native):
        notes.append(HOST_TIMED_GPU_NOTE)
    # Whether a CUDA graph ran: the backend's own flag when it has one, else what was asked; None if unsupported.
    graph = None
    if "cuda_graph" in type(backend).OPTIONS:
        actual = getattr(backend, "cuda_graph", None)
        graph = actual if isinstance(actual, bool) else bool(prepared.cuda_graph) and device.type == "cuda"
    info = backend.info
    return BenchResult(str(prepared.path), backend.name, backend.provider or str(device), info.arch, info.precision,
                       info.head, prepared.size, prepared.batch, graph, artifact_size_mb(prepared.path), measurement, notes)


def bench_model(path: str | Path, device, settings: TimingSettings, *,
                size: tuple[int, int] | None = None, batch: int = 1, precision: str | None = None,
                cuda_graph: bool | None = None, backend_options: dict[str, Any] | None = None) -> BenchResult:
    """Measure one model file at ``size`` (width, height; default its own) on ``device`` (a ``torch.device``, a
    ``devices.Device``, or a ``--device`` string resolved by :func:`resolve_bench_device`)."""
    if isinstance(device, str):
        device = resolve_bench_device(device, [path])
    prepared = prepare_bench(path, device, size=size, batch=batch, precision=precision, cuda_graph=cuda_graph,
                             backend_options=backend_options)
    return run_prepared(prepared, settings)
