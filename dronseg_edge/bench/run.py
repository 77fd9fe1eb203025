"""Benchmark one model file: open its backend with the requested options, check shapes, measure."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dronseg_edge.bench.timing import Measurement, TimingSettings, measure
from dronseg_edge.errors import BackendUnavailable, DronsegError
from dronseg_edge.metadata import ModelInfo
from dronseg_edge.runtime.base import Backend, preprocess
from dronseg_edge.runtime.registry import backend_class, load_backend
from dronseg_edge.sizes import format_size


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
        data = {k: getattr(self, k) for k in ("model", "backend", "provider", "arch", "precision", "head",
                                                "batch", "cuda_graph", "file_mb", "notes")}
        data["input_size"] = format_size(self.input_size)
        data.update(self.measurement.to_dict())
        return data


def artifact_size_mb(path: Path) -> float:
    """File size in MB (1e6 bytes), counting an ONNX external-data file ``<name>.data`` beside it."""
    path = Path(path)
    total = path.stat().st_size
    external = path.with_name(path.name + ".data")
    if external.is_file():
        total += external.stat().st_size
    return total / 1e6


def open_backend(path: Path, device: torch.device, *, precision: str | None = None,
                 cuda_graph: bool | None = None, **options) -> tuple[Backend, list[str]]:
    """Construct the backend for ``path``, passing only the options its class declares (``Backend.OPTIONS``).

    ``precision`` applies to checkpoints (an exported file carries its own); ``cuda_graph`` is
    passed where the backend supports it, otherwise a note says it was not. Returns (backend, notes).
    """
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
    source = info.extra.get("source_checkpoint") or "CHECKPOINT"
    if batch < 1:
        raise DronsegError(f"--batch {batch} must be at least 1")
    built = tuple(info.input_size)
    if size is not None and tuple(size) != built and not info.dynamic:
        raise DronsegError(
            f"{backend.path} was built for {format_size(built)} (static shape) and cannot run at {format_size(size)}: "
            f"drop --size, or re-export at that size (`dronseg-edge export {source} --size {format_size(size)}`, "
            "or --dynamic)")
    if info.batch is not None and batch != info.batch:
        raise DronsegError(
            f"{backend.path} was built for batch {info.batch} and cannot run batch {batch}: use --batch {info.batch}, "
            f"or re-export with `dronseg-edge export {source} --batch {batch}` (or --dynamic)")
    return tuple(size) if size is not None else built


def make_input(info: ModelInfo, size: tuple[int, int], batch: int, seed: int = 0) -> torch.Tensor:
    """A reproducible normalised float32 batch (batch, 3, H, W) on the host: random frames, preprocessed."""
    width, height = size
    frames = np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
    return preprocess(frames, dataclasses.replace(info, input_size=(width, height)), torch.device("cpu"))


@dataclass
class PreparedBench:
    """A constructed (not yet activated) backend whose shape has been checked: cheap to hold, quick to fail."""

    path: Path
    backend: Backend
    size: tuple[int, int]  # (width, height)
    batch: int
    cuda_graph: bool | None
    notes: list[str]


def prepare_bench(path: str | Path, device: torch.device, *, size: tuple[int, int] | None = None, batch: int = 1,
                  precision: str | None = None, cuda_graph: bool | None = None,
                  backend_options: dict[str, Any] | None = None) -> PreparedBench:
    """Open ``path``'s backend and check that it can run ``size``/``batch``; raise DronsegError if not."""
    path = Path(path)
    backend, notes = open_backend(path, device, precision=precision, cuda_graph=cuda_graph, **(backend_options or {}))
    return PreparedBench(path, backend, resolve_shape(backend, size, batch), batch, cuda_graph, notes)


def run_prepared(prepared: PreparedBench, settings: TimingSettings,
                 progress: Callable[[int], None] | None = None) -> BenchResult:
    """Measure a prepared backend (activated here, deactivated afterwards)."""
    backend, device = prepared.backend, prepared.backend.device
    batch_host = make_input(backend.info, prepared.size, prepared.batch)
    try:
        measurement = measure(backend, batch_host, settings, progress=progress)
    finally:
        backend.deactivate()
    notes = list(prepared.notes)
    if settings.include_transfers and device.type != "cuda":
        notes.append("transfers: none on the CPU (input and output stay in host memory)")
    return BenchResult(
        model=str(prepared.path),
        backend=backend.name,
        provider=backend.provider or str(device),
        arch=backend.info.arch,
        precision=backend.info.precision,
        head=backend.info.head,
        input_size=prepared.size,
        batch=prepared.batch,
        cuda_graph=_graph_state(backend, prepared.cuda_graph),
        file_mb=artifact_size_mb(prepared.path),
        measurement=measurement,
        notes=notes,
    )


def bench_model(path: str | Path, device: torch.device, settings: TimingSettings, *,
                size: tuple[int, int] | None = None, batch: int = 1, precision: str | None = None,
                cuda_graph: bool | None = None, backend_options: dict[str, Any] | None = None,
                progress: Callable[[int], None] | None = None) -> BenchResult:
    """Measure one model file; ``size`` is (width, height), default the model's own input size."""
    prepared = prepare_bench(path, device, size=size, batch=batch, precision=precision, cuda_graph=cuda_graph,
                             backend_options=backend_options)
    return run_prepared(prepared, settings, progress)


def _graph_state(backend: Backend, requested: bool | None) -> bool | None:
    """Whether a CUDA graph ran: the backend's own flag when it has one, else what was asked; None if unsupported."""
    if "cuda_graph" not in type(backend).OPTIONS:
        return None
    actual = getattr(backend, "cuda_graph", None)
    if isinstance(actual, bool):
        return actual
    return bool(requested) and backend.device.type == "cuda"
