"""TensorRT backend for ``.engine``/``.plan`` files written by ``dronseg-edge export --format engine``.

tensorrt, numpy and NVIDIA's CUDA Python bindings (runtime/cuda_runtime.py), never torch. numpy in,
numpy out (``Backend.infer`` converts torch tensors at the edge): the batch goes through a pinned
buffer to fixed device buffers on the backend's own stream, the engine runs (``execute_async_v3``),
every output comes back through pinned buffers, and a **copy** of each is returned (the next call
rewrites the buffers; the pipeline's sink threads keep results).

``cuda_graph`` (trtexec's ``--useCudaGraph``, default on): the launches for one input shape are
captured once and replayed. As TensorRT requires, the context is enqueued once after its shape and
addresses are set (that run gives the first call's result) before capture, which is thread-local,
on the backend's stream, one at a time in the process. One graph is kept, for the latest shape:
graphs of one context share its scratch memory. An engine that cannot be captured runs without a
graph, with a warning. The sidecar says which GPU and TensorRT version built the engine; anything
else is refused with how to rebuild. Not thread-safe: one backend serves one thread at a time.
"""

from __future__ import annotations

import logging
import reprlib
from pathlib import Path

import numpy as np

from dronseg_edge.errors import DronsegError, RuntimeFailure
from dronseg_edge.metadata import ModelInfo, read_engine_sidecar
from dronseg_edge.runtime import cuda_runtime, tensorrt_env
from dronseg_edge.runtime.base import Backend, TensorSpec, check_declared_io, named_first

log = logging.getLogger(__name__)


def numpy_dtype(trt, dtype) -> np.dtype:
    """numpy dtype of a TensorRT tensor type (``trt.nptype``; none for BF16 and FP8)."""
    try:
        return np.dtype(trt.nptype(dtype))
    except TypeError:
        raise DronsegError(f"engine tensor type {dtype} has no numpy equivalent: rebuild the engine with `dronseg-edge export`") from None


def _nbytes(shape, dtype: np.dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


class TensorRTBackend(Backend):
    """Runs a serialized TensorRT engine on a CUDA device (one input ``images``, one output)."""

    name = "tensorrt"
    OPTIONS = frozenset({"cuda_graph"})

    def __init__(self, path: Path, device, cuda_graph: bool | None = None):
        self._engine = None
        self._context = None
        self.cuda_graph = True if cuda_graph is None else bool(cuda_graph)
        self._stream: cuda_runtime.Stream | None = None  # the backend's own CUDA stream, made in activate
        self._index = 0  # the GPU, resolved in activate
        # Fixed buffers by tensor name, input and outputs: what the context is bound to.
        self._device: dict[str, cuda_runtime.DeviceBuffer] = {}
        self._host: dict[str, cuda_runtime.PinnedBuffer] = {}
        self._fixed_shapes: dict[str, tuple] | None = None  # every tensor's shape, bound to those buffers
        self._graph: cuda_runtime.Graph | None = None  # captured for the shape in _fixed_shapes
        super().__init__(path, device)

    def read_info(self) -> ModelInfo:
        """The sidecar's metadata (``load_backend(..., meta=FILE)`` gives an engine without one its metadata instead)."""
        return read_engine_sidecar(self.path, missing="pass --meta FILE (the ONNX it was built from, or a sidecar "
                                   "JSON), or rebuild it with `dronseg-edge export CHECKPOINT --format engine`, which "
                                   "writes both files")

    @property
    def build(self) -> dict:
        """What built the engine, from its sidecar: tensorrt_version, gpu_name, compute_capability, flags, profile."""
        build = self.info.extra.get("tensorrt") or {}
        core = build.get("dla_core") if isinstance(build, dict) else "none"  # an edited sidecar's "x", or dla_core "x"
        if core is not None and (isinstance(core, bool) or not isinstance(core, int)):
            raise DronsegError(f"engine {self.path}: its sidecar's build record {reprlib.repr(build)} is not an object "
                               f"with a whole dla_core: {self._rebuild_hint()}")
        return dict(build)

    def _rebuild_hint(self) -> str:
        source = self.info.extra.get("source_checkpoint") or "CHECKPOINT"
        return f"rebuild it on this machine: dronseg-edge export {source} --format engine --precision {self.info.precision}"

    def activate(self) -> None:
        trt = tensorrt_env.import_tensorrt()
        here = {"tensorrt_version": str(trt.__version__), **tensorrt_env.gpu_identity(self.device)}  # a CPU: refused
        self._index = cuda_runtime.resolve_index(self.device)
        if not self.build:  # metadata from --meta (an engine built elsewhere): no record of what built it
            log.warning("engine %s has no build record (no sidecar): the GPU and TensorRT version it was built for "
                        "could not be checked; TensorRT's own check decides", self.path.name)
        elif problem := tensorrt_env.engine_mismatch(self.build, here):
            raise DronsegError(f"engine {self.path} {problem}: {self._rebuild_hint()}")
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        dla_core = self.build.get("dla_core")
        if dla_core is not None:  # an engine built for a DLA core (export --dla-core) is loaded onto that core
            self._runtime.DLA_core = int(dla_core)
        with cuda_runtime.on_device(self._index):  # TensorRT loads and launches into the current device's context
            try:
                self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            except Exception as exc:  # older bindings raise where newer ones return None; an unreadable file
                log.warning("TensorRT could not deserialize %s: %s", self.path.name, " ".join(str(exc).split())[:200])
                self._engine = None
            if self._engine is None:
                raise DronsegError(f"TensorRT {trt.__version__} cannot load engine {self.path} (see its messages above): {self._rebuild_hint()}")
            self._context = self._engine.create_execution_context()
            # Its own stream, not the legacy default stream, which serialises with every stream in the process.
            self._stream = cuda_runtime.Stream()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = named_first([n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT], self.info.outputs)
        if len(self._inputs) != 1 or not self._outputs:
            raise DronsegError(f"engine {self.path} has inputs {self._inputs} and outputs {self._outputs}, "
                               f"not one image input: {self._rebuild_hint()}")
        self._dtypes = {n: numpy_dtype(trt, self._engine.get_tensor_dtype(n)) for n in names}
        check_declared_io(self.path, self.info, self._specs(self._inputs), self._specs(self._outputs))
        self._device = {n: cuda_runtime.DeviceBuffer() for n in names}
        self._host = {n: cuda_runtime.PinnedBuffer() for n in names}
        self._version = str(trt.__version__)
        self._describe_provider()
        self.active = True

    def _specs(self, names: list[str]) -> list[TensorSpec]:
        """The engine's declared tensors (-1: a dimension its optimisation profile leaves open)."""
        return [TensorSpec(n, self._dtypes[n].name, tuple(None if int(d) < 0 else int(d) for d in self._engine.get_tensor_shape(n)))
                for n in names]

    def _describe_provider(self) -> None:
        flags = "+".join(map(str, self.build.get("builder_flags") or []))
        typing = "strongly typed" if self.build.get("strongly_typed") else flags or "fp32"
        tf32 = ", TF32 off" if self.build.get("tf32") is False else ""
        graph = " + CUDA graph" if self.cuda_graph else ""
        self.provider = f"TensorRT {self._version} {self.info.precision} ({typing}{tf32}){graph}"

    def deactivate(self) -> None:
        """Free the graph, buffers and stream (best effort: a failure here is logged, never raised over another)."""
        try:
            if self._stream is not None:
                with cuda_runtime.on_device(self._index):
                    self._stream.synchronize()
                    self._drop_graph()
                    for buffer in (*self._device.values(), *self._host.values()):
                        buffer.free()
                    self._stream.close()
        except DronsegError as exc:
            log.warning("releasing %s: %s", self.path.name, exc)
        self._stream = self._fixed_shapes = self._context = self._engine = None
        super().deactivate()

    def runtime_errors(self) -> tuple[type[BaseException], ...]:
        """CUDA and TensorRT failures reach here as RuntimeFailure (cuda_runtime.check, a failed enqueue)."""
        return (*super().runtime_errors(), RuntimeFailure)

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        """numpy in, numpy out (new arrays): pinned staging, upload, run, download, synchronise.

        Returns the first output; every output (a frames engine's ``confidence`` too) is in ``last_outputs``.
        """
        image = self._inputs[0]
        with cuda_runtime.on_device(self._index):
            shapes = self._bind_fixed(tuple(batch.shape))
            nbytes = {name: _nbytes(shape, self._dtypes[name]) for name, shape in shapes.items()}
            for name, size in nbytes.items():
                self._host[name].ensure(size)
            np.copyto(self._host[image].array(shapes[image], self._dtypes[image]), batch, casting="same_kind")
            self._stream.copy(self._device[image].ptr, self._host[image].ptr, nbytes[image], "h2d")
            self._execute()
            for name in self._outputs:
                self._stream.copy(self._host[name].ptr, self._device[name].ptr, nbytes[name], "d2h")
            self._stream.synchronize()
            # New arrays: the pinned buffers are rewritten by the next call. Logits come back float32.
            staged = {name: self._host[name].array(shapes[name], self._dtypes[name]) for name in self._outputs}
            outs = {name: a.astype(np.float32) if i == 0 and self.info.head == "logits" else a.copy()
                    for i, (name, a) in enumerate(staged.items())}
        self.last_outputs = outs
        return outs[self._outputs[0]]

    # -- the engine on the fixed buffers ----------------------------------------------------------

    def _bind_fixed(self, shape: tuple) -> dict[str, tuple]:
        """Bind the context to the fixed device buffers for input ``shape`` (grown as needed); returns every tensor's shape."""
        if self._fixed_shapes is not None and self._fixed_shapes[self._inputs[0]] == shape:
            return self._fixed_shapes
        self._drop_graph()  # captured for other addresses or another shape
        if not self._context.set_input_shape(self._inputs[0], shape):
            raise DronsegError(f"engine {self.path} does not accept input shape {shape} "
                               f"(profile: {self.build.get('profile') or 'static'}): re-export with matching --size/--batch or --dynamic")
        shapes = {self._inputs[0]: shape, **{name: tuple(self._context.get_tensor_shape(name)) for name in self._outputs}}
        for name, tensor_shape in shapes.items():
            self._device[name].ensure(_nbytes(tensor_shape, self._dtypes[name]))
            self._context.set_tensor_address(name, self._device[name].ptr)
        self._fixed_shapes = shapes
        return shapes

    def _execute(self) -> None:
        """Run the engine on the bound fixed buffers, on the backend's stream (replaying its graph when captured)."""
        if self._graph is not None:
            self._graph.launch(self._stream)
            return
        # A plain enqueue: without a graph the run itself; with one to capture, the enqueue TensorRT
        # needs after a shape or address change before capture, which also computes this call's result.
        self._enqueue()
        if self.cuda_graph:
            try:
                self._graph = cuda_runtime.capture(self._stream, self._enqueue)
            except RuntimeFailure as exc:  # e.g. a plugin that synchronises: running without beats failing
                log.warning("CUDA graph capture failed (%s); running %s without it", str(exc)[:160], self.path.name)
                self.cuda_graph = False
                self._describe_provider()

    def _enqueue(self) -> None:
        """Queue the engine on the backend's stream."""
        if not self._context.execute_async_v3(int(self._stream)):
            raise RuntimeFailure(f"TensorRT execute_async_v3 failed on {self.path.name} (see TensorRT's messages above)")

    def _drop_graph(self) -> None:
        graph, self._graph = self._graph, None
        if graph is not None:
            graph.close()
