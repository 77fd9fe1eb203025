"""TensorRT backend for ``.engine``/``.plan`` files written by ``dronseg-edge export --format engine``.

Buffers are torch CUDA tensors and the engine runs on torch's current CUDA stream
(``execute_async_v3``), so no pycuda and no extra copies: the output is an ordinary torch tensor,
ordered after the input on the same stream. The engine's JSON sidecar says which GPU and TensorRT
version built it; anything else is refused with a message saying how to rebuild.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dronseg_edge.errors import DronsegError
from dronseg_edge.export.onnx_metadata import read_engine_sidecar
from dronseg_edge.export.tensorrt import engine_mismatch, gpu_identity, import_tensorrt
from dronseg_edge.metadata import ModelInfo
from dronseg_edge.runtime.base import Backend


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

    def __init__(self, path: Path, device: torch.device):
        self._engine = None
        self._context = None
        super().__init__(path, device)

    def read_info(self) -> ModelInfo:
        info = read_engine_sidecar(self.path)
        self.build = dict(info.extra.get("tensorrt") or {})
        return info

    def _rebuild_hint(self) -> str:
        source = self.info.extra.get("source_checkpoint") or "CHECKPOINT"
        return f"rebuild it on this machine: dronseg-edge export {source} --format engine --precision {self.info.precision}"

    def activate(self) -> None:
        trt = import_tensorrt()
        here = {"tensorrt_version": str(trt.__version__), **gpu_identity(self.device)}
        problem = engine_mismatch(self.build, here)
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
        typing = "strongly typed" if self.build.get("strongly_typed") else "+".join(self.build.get("builder_flags") or []) or "fp32"
        self.provider = f"TensorRT {trt.__version__} {self.info.precision} ({typing})"

    def deactivate(self) -> None:
        self._context = None
        self._engine = None
        super().deactivate()

    def _infer(self, batch: torch.Tensor) -> torch.Tensor:
        name = self._inputs[0]
        x = batch.to(self.device, self._dtypes[name]).contiguous()
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
        stream = torch.cuda.current_stream(self.device)
        if not self._context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execute_async_v3 failed on {self.path}")
        # No synchronisation: x and the outputs were allocated on this stream, so torch's caching
        # allocator cannot hand their memory to later work before the engine has finished with it.
        return outputs[0].float() if self.info.head == "logits" else outputs[0]
