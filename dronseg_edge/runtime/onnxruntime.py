"""ONNX Runtime backend for ``.onnx`` files written by ``dronseg-edge export``.

On a GPU it asks for TensorRT > CUDA > CPU execution providers (whichever this onnxruntime build
has and can start), binds torch CUDA tensors directly (IO binding: no host round trip) and, for
static shapes on the CUDA provider, lets ONNX Runtime replay its own CUDA graph. On the CPU it
passes numpy views of torch tensors in and out. ``provider`` says what actually runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from dronseg_edge.errors import BackendUnavailable, DronsegError
from dronseg_edge.export.onnx_metadata import read_onnx_info
from dronseg_edge.metadata import ModelInfo
from dronseg_edge.runtime.base import Backend

log = logging.getLogger(__name__)

PROVIDER_CHOICES = ("auto", "tensorrt", "cuda", "cpu")
_PROVIDER_NAMES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
_NUMPY_TO_TORCH = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
                   np.dtype(np.uint8): torch.uint8, np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32}
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable(
            "running .onnx files needs onnxruntime: pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA, x86-64); "
            "on Jetson install NVIDIA's onnxruntime-gpu wheel for your JetPack"
        ) from None
    return onnxruntime


class OnnxRuntimeBackend(Backend):
    """Runs an ONNX file with ONNX Runtime.

    ``provider``: auto | tensorrt | cuda | cpu (auto: the fastest this device and build allow);
    ``cuda_graph``: replay an ONNX Runtime CUDA graph (CUDA provider, static shapes; default on there);
    ``threads``: CPU intra-op threads (0 = ONNX Runtime's choice).
    """

    name = "onnxruntime"

    def __init__(self, path: Path, device: torch.device, provider: str = "auto", cuda_graph: bool | None = None,
                 threads: int = 0):
        if provider not in PROVIDER_CHOICES:
            raise DronsegError(f"--provider {provider!r} is not one of {', '.join(PROVIDER_CHOICES)}")
        if provider in ("tensorrt", "cuda") and device.type != "cuda":
            raise DronsegError(f"--provider {provider} needs a CUDA device; use --device cuda or --provider cpu")
        self.requested = provider
        self.cuda_graph_requested = cuda_graph
        self.cuda_graph = False
        self.threads = threads
        self.session = None
        super().__init__(path, device)

    def read_info(self) -> ModelInfo:
        return read_onnx_info(self.path)

    # -- session ------------------------------------------------------------------------------
    def _candidates(self, ort) -> list[str]:
        available = set(ort.get_available_providers())
        if self.device.type != "cuda":
            return ["cpu"]
        wanted = ["tensorrt", "cuda"] if self.requested == "auto" else [self.requested]
        found = [p for p in wanted if _PROVIDER_NAMES[p] in available]
        if not found:
            if self.requested != "auto":
                raise BackendUnavailable(
                    f"this onnxruntime {ort.__version__} has no {_PROVIDER_NAMES[self.requested]} "
                    f"(it has {', '.join(sorted(available))}): pip install onnxruntime-gpu (and uninstall onnxruntime)"
                )
            log.warning("onnxruntime %s has no CUDA provider; %s runs on the CPU (pip install onnxruntime-gpu)",
                        ort.__version__, self.path.name)
            return ["cpu"]
        return found

    def _provider_entry(self, name: str):
        index = self.device.index if self.device.index is not None else 0
        if name == "cpu":
            return "CPUExecutionProvider"
        if name == "cuda":
            options = {"device_id": str(index)}
            if self.cuda_graph:
                options["enable_cuda_graph"] = "1"
            return ("CUDAExecutionProvider", options)
        options = {"device_id": str(index), "trt_fp16_enable": "False", "trt_engine_cache_enable": "True",
                   "trt_engine_cache_path": str(self.path.parent / ".ort_trt_cache")}
        return ("TensorrtExecutionProvider", options)

    def activate(self) -> None:
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            options.intra_op_num_threads = int(self.threads)
        # Spinning worker threads burn the cores that decode and write frames in the pipeline.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: provider fallbacks are reported through `provider`
        errors: list[str] = []
        self.session = None
        for name in self._candidates(ort):
            session = self._try_session(ort, options, name, errors)
            if session is not None:
                self.session = session
                break
        if self.session is None:
            if self.requested != "auto":
                raise BackendUnavailable(f"onnxruntime cannot run {self.path} on {self.requested} ({'; '.join(errors)})")
            log.warning("onnxruntime could not start a GPU provider (%s); %s runs on the CPU", "; ".join(errors), self.path.name)
            self.cuda_graph = False
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=["CPUExecutionProvider"])
        used = self.session.get_providers()[0]
        self.cuda_graph = self.cuda_graph and used == "CUDAExecutionProvider"
        self.provider = used + (" + CUDA graph" if self.cuda_graph else "")
        if errors:
            self.provider += f" (tried: {'; '.join(errors)})"
        self._input = self.session.get_inputs()[0]
        self._outputs = self.session.get_outputs()
        self._on_gpu = used != "CPUExecutionProvider" and self.device.type == "cuda"
        self._binding = None
        self._static = None

    def _try_session(self, ort, options, name: str, errors: list[str]):
        """A session whose first provider really is ``name``, or None (the reason appended to ``errors``)."""
        self.cuda_graph = name == "cuda" and not self.info.dynamic and self.cuda_graph_requested is not False
        chain = [self._provider_entry(name)] + (["CPUExecutionProvider"] if name != "cpu" else [])
        try:
            session = ort.InferenceSession(str(self.path), sess_options=options, providers=chain)
        except Exception as exc:  # listed but cannot start, e.g. the TensorRT provider without TensorRT libraries
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            errors.append(f"{name}: {reason}")
            return None
        used = session.get_providers()[0]
        if used != _PROVIDER_NAMES[name]:
            errors.append(f"{name}: onnxruntime fell back to {used}")
            return None
        return session

    def deactivate(self) -> None:
        self.session = None
        self._binding = None
        self._static = None
        super().deactivate()

    # -- inference ----------------------------------------------------------------------------
    def _infer(self, batch: torch.Tensor) -> torch.Tensor:
        self._check_batch(batch)
        if not self._on_gpu:
            feed = batch.detach().to("cpu", torch.float32).contiguous().numpy()
            out = self.session.run([self._outputs[0].name], {self._input.name: feed})[0]
            return torch.from_numpy(out).to(self.device)
        return self._infer_bound(batch)

    def _check_batch(self, batch: torch.Tensor) -> None:
        width, height = self.info.input_size
        if batch.ndim != 4 or batch.shape[1] != 3:
            raise DronsegError(f"{self.path.name} takes (N, 3, H, W) batches, got {tuple(batch.shape)}")
        if not self.info.dynamic and (tuple(batch.shape[2:]) != (height, width) or
                                      (self.info.batch and batch.shape[0] != self.info.batch)):
            raise DronsegError(
                f"{self.path.name} was exported for {self.info.batch or 'N'}x3x{height}x{width} inputs, got "
                f"{'x'.join(map(str, batch.shape))}: re-export with --size/--batch to match, or with --dynamic"
            )

    def _output_shape(self, batch: torch.Tensor) -> tuple[int, ...]:
        n, _, h, w = batch.shape
        return (n, self.info.num_classes, h, w) if self.info.head == "logits" else (n, h, w)

    def _infer_bound(self, batch: torch.Tensor) -> torch.Tensor:
        """IO binding on torch CUDA memory; with a CUDA graph the same buffers every call."""
        ort_device = "cuda"
        index = self.device.index if self.device.index is not None else torch.cuda.current_device()
        out_dtype = _ORT_TYPES.get(self._outputs[0].type, np.float32)
        if self.cuda_graph:
            if self._static is None:
                static_in = torch.empty(batch.shape, dtype=torch.float32, device=self.device)
                static_out = torch.empty(self._output_shape(batch), dtype=_NUMPY_TO_TORCH[np.dtype(out_dtype)], device=self.device)
                binding = self.session.io_binding()
                binding.bind_input(self._input.name, ort_device, index, np.float32, tuple(static_in.shape), static_in.data_ptr())
                binding.bind_output(self._outputs[0].name, ort_device, index, out_dtype, tuple(static_out.shape), static_out.data_ptr())
                self._static, self._binding = (static_in, static_out), binding
            static_in, static_out = self._static
            static_in.copy_(batch)
            x, out, binding = static_in, static_out, self._binding
        else:
            x = batch.to(self.device, torch.float32).contiguous()
            out = torch.empty(self._output_shape(batch), dtype=_NUMPY_TO_TORCH[np.dtype(out_dtype)], device=self.device)
            binding = self.session.io_binding()
            binding.bind_input(self._input.name, ort_device, index, np.float32, tuple(x.shape), x.data_ptr())
            binding.bind_output(self._outputs[0].name, ort_device, index, out_dtype, tuple(out.shape), out.data_ptr())
        # ONNX Runtime works on its own stream: the input must be complete before it starts.
        torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        # The graph writes every replay into the same buffer; a copy keeps earlier results intact.
        return out.clone() if self.cuda_graph else out
