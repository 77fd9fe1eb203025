"""TensorRT backend for ``.engine``/``.plan`` files written by ``dronseg-edge export --format engine``.

Buffers are torch CUDA tensors and the engine runs on the backend's own CUDA stream
(``execute_async_v3``), so no pycuda and no extra copies: that stream waits for the caller's
current stream before it reads the input, and the caller's stream waits for it before anything
reads the output, an ordinary torch tensor. The engine's JSON sidecar says which GPU and TensorRT
version built it; anything else is refused with a message saying how to rebuild.

With ``cuda_graph`` (trtexec's ``--useCudaGraph``) the engine's launches for one input shape are
captured once into a CUDA graph and replayed: the input is copied into a fixed buffer, so the
captured tensor addresses stay valid. As TensorRT requires, the context is enqueued once after its
shape and addresses are set and before capture begins, and capture runs on the backend's own
stream (runtime/cuda_graph.py). One graph is kept, for the latest shape, because graphs that
share one execution context share its scratch memory. An engine that cannot be captured runs
without a graph, with a warning.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dronseg_edge.errors import DronsegError
from dronseg_edge.metadata import ModelInfo, read_engine_sidecar
from dronseg_edge.runtime import tensorrt_env
from dronseg_edge.runtime.base import Backend
from dronseg_edge.runtime.cuda_graph import GraphCache, run_on


def torch_dtype(trt, dtype) -> torch.dtype:
    """torch dtype of a TensorRT tensor type."""
    table = {trt.DataType.FLOAT: torch.float32, trt.DataType.HALF: torch.float16, trt.DataType.INT32: torch.int32,
             trt.DataType.INT8: torch.int8, trt.DataType.UINT8: torch.uint8, trt.DataType.BOOL: torch.bool,
             trt.DataType.INT64: torch.int64, trt.DataType.BF16: torch.bfloat16}
    if dtype not in table:
        raise DronsegError(f"engine tensor type {dtype} has no torch equivalent: rebuild the engine with `dronseg-edge export`")
    return table[dtype]


class TensorRTBackend(Backend):
    """Runs a serialized TensorRT engine on a CUDA device (one input ``images``, one output)."""

    name = "tensorrt"
    OPTIONS = frozenset({"cuda_graph"})

    def __init__(self, path: Path, device: torch.device, cuda_graph: bool | None = None):
        self._engine = None
        self._context = None
        self.cuda_graph = True if cuda_graph is None else bool(cuda_graph)
        self._graphs = GraphCache(device, max_graphs=1, label=Path(path).name)
        self._stream = None  # the backend's own CUDA stream, made in activate
        self._bound_outputs: list[torch.Tensor] = []  # every output of the latest binding, kept alive with it
        super().__init__(path, device)

    def read_info(self) -> ModelInfo:
        return read_engine_sidecar(self.path)

    @property
    def build(self) -> dict:
        """What built the engine, from its sidecar: tensorrt_version, gpu_name, compute_capability, flags, profile."""
        return dict(self.info.extra.get("tensorrt") or {})

    def _rebuild_hint(self) -> str:
        source = self.info.extra.get("source_checkpoint") or "CHECKPOINT"
        return f"rebuild it on this machine: dronseg-edge export {source} --format engine --precision {self.info.precision}"

    def activate(self) -> None:
        trt = tensorrt_env.import_tensorrt()
        here = {"tensorrt_version": str(trt.__version__), **tensorrt_env.gpu_identity(self.device)}
        problem = tensorrt_env.engine_mismatch(self.build, here)
        if problem:
            raise DronsegError(f"engine {self.path} {problem}: {self._rebuild_hint()}")
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        with torch.cuda.device(self.device):
            self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self._engine is None:
                raise DronsegError(f"TensorRT {trt.__version__} cannot load engine {self.path} (see its messages above): {self._rebuild_hint()}")
            self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(self._inputs) != 1 or not self._outputs:
            raise DronsegError(f"engine {self.path} has inputs {self._inputs} and outputs {self._outputs}, "
                               f"not one image input: {self._rebuild_hint()}")
        self._dtypes = {n: torch_dtype(trt, self._engine.get_tensor_dtype(n)) for n in names}
        self._version = str(trt.__version__)
        # Its own stream, not torch's current one (the legacy default stream unless a caller set
        # another): that one serialises with every stream in the process.
        self._stream = torch.cuda.Stream(self.device)
        self._graphs = GraphCache(self.device, self._stream, max_graphs=1, label=self.path.name)
        self._describe_provider()

    def _describe_provider(self) -> None:
        typing = "strongly typed" if self.build.get("strongly_typed") else "+".join(self.build.get("builder_flags") or []) or "fp32"
        graph = " + CUDA graph" if self.cuda_graph else ""
        self.provider = f"TensorRT {self._version} {self.info.precision} ({typing}){graph}"

    def deactivate(self) -> None:
        self._graphs.clear()
        self._context = None
        self._engine = None
        super().deactivate()

    def _infer(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.cuda.device(self.device):  # TensorRT launches into the current device's context
            out = None
            if self.cuda_graph:
                out = self._replay(batch)
            if out is None:
                out = run_on(self._stream, self.device, lambda: self._launch(batch), batch)
        return out.float() if self.info.head == "logits" else out

    def _launch(self, batch: torch.Tensor) -> torch.Tensor:
        """One plain (no graph) run, queued on the current stream: the backend's own, set by the caller."""
        x = batch.to(self.device, self._dtypes[self._inputs[0]]).contiguous()
        out = self._bind(x)
        self._enqueue()
        # No synchronisation: the outputs (and a converted x) are allocated on this stream and a
        # caller's batch is recorded for it (run_on), so torch's caching allocator cannot hand
        # their memory to other work before the engine has finished with it.
        return out

    def _bind(self, x: torch.Tensor) -> torch.Tensor:
        """Set the input shape and every tensor address; returns the (first) output tensor."""
        name = self._inputs[0]
        if not self._context.set_input_shape(name, tuple(x.shape)):
            raise DronsegError(f"engine {self.path} does not accept input shape {tuple(x.shape)} "
                               f"(profile: {self.build.get('profile') or 'static'}): re-export with matching --size/--batch or --dynamic")
        self._context.set_tensor_address(name, x.data_ptr())
        outputs = []
        for out_name in self._outputs:
            shape = tuple(self._context.get_tensor_shape(out_name))
            out = torch.empty(shape, dtype=self._dtypes[out_name], device=self.device)
            self._context.set_tensor_address(out_name, out.data_ptr())
            outputs.append(out)
        self._bound_outputs = outputs
        return outputs[0]

    def _enqueue(self) -> None:
        """Queue the engine on the current stream (the backend's own, the warm-up's side stream, or the capture stream)."""
        stream = torch.cuda.current_stream(self.device)
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execute_async_v3 failed on {self.path}")

    def _replay(self, batch: torch.Tensor) -> torch.Tensor | None:
        shape = tuple(batch.shape)
        entry = self._graphs.get(shape)
        if entry is None:
            self._graphs.clear()  # its buffers and the context's addresses are about to change

            def prepare(inputs):
                output = self._bind(inputs[0])

                def launch():
                    self._enqueue()
                    return output

                return launch

            entry = self._graphs.capture(shape, (batch,), prepare, warmup=1, dtype=self._dtypes[self._inputs[0]])
            if entry is None:
                self.cuda_graph = False
                self._describe_provider()
                return None
        return self._graphs.replay(entry, batch)
