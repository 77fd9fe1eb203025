"""ONNX Runtime backend for ``.onnx`` files written by ``dronseg-edge export``.

On a GPU it asks for TensorRT > CUDA > CPU execution providers (whichever this onnxruntime build
has and can start; a TensorRT session keeps CUDA, then CPU, for the nodes TensorRT rejects),
binds torch CUDA tensors directly (IO binding: no host round trip) and, for static shapes on the
CUDA provider, lets ONNX Runtime replay its own CUDA graph. Each session is checked for what it
really runs (onnxruntime may silently retry with default options: device 0, no graph). On the CPU it
passes numpy views of torch tensors in and out. ``provider`` says what actually runs.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from dronseg_edge.errors import BackendUnavailable, DronsegError
from dronseg_edge.metadata import ModelInfo, read_onnx_info
from dronseg_edge.runtime.base import Backend

log = logging.getLogger(__name__)

PROVIDER_CHOICES = ("auto", "tensorrt", "cuda", "cpu")
_PROVIDER_NAMES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
_NUMPY_TO_TORCH = {np.dtype(np.float32): torch.float32, np.dtype(np.float16): torch.float16,
                   np.dtype(np.uint8): torch.uint8, np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32}
_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _provider_options(session) -> dict[str, str]:
    """The options the session's first provider really runs with ({} when onnxruntime does not say)."""
    try:
        return dict(session.get_provider_options().get(session.get_providers()[0]) or {})
    except AttributeError:
        return {}


def trt_engine_cache_dir(model: Path) -> Path:
    """Where the TensorRT provider keeps the engines it builds: beside the model when that folder is
    writable, else in the user's cache folder (a read-only model folder, e.g. a Jetson's system
    image, would fail the first inference)."""
    beside = Path(model).resolve().parent / ".ort_trt_cache"
    user = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dronseg-edge" / "ort_trt"
    for folder in (beside, user):
        if _writable_folder(folder):
            return folder
    raise DronsegError(f"neither {beside} nor {user} can be written for TensorRT's engine cache: "
                       "make one writable, or set XDG_CACHE_HOME to a writable folder")


def _writable_folder(folder: Path) -> bool:
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return False
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK | os.X_OK)


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
    OPTIONS = frozenset({"provider", "cuda_graph", "threads"})

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

    @property
    def _device_id(self) -> str:
        return str(self.device.index if self.device.index is not None else 0)

    def _cuda_options(self, graph: bool) -> dict[str, str]:
        options = {"device_id": self._device_id}
        if graph:
            options["enable_cuda_graph"] = "1"
        if self.info.precision == "fp32":
            # CUDA's default TF32 convolutions differ from fp32 by ~1e-3 relative, enough to fail
            # parity against the (strict fp32) PyTorch reference at 1280x720: fp32 means fp32.
            options["use_tf32"] = "0"
        return options

    def _chain(self, name: str, graph: bool) -> list:
        """Providers for a session led by ``name``; every node the leader rejects falls to the next."""
        if name == "cpu":
            return ["CPUExecutionProvider"]
        cuda = ("CUDAExecutionProvider", self._cuda_options(graph))
        if name == "cuda":
            return [cuda, "CPUExecutionProvider"]
        options = {"device_id": self._device_id, "trt_fp16_enable": "False", "trt_engine_cache_enable": "True",
                   "trt_engine_cache_path": str(trt_engine_cache_dir(self.path))}
        return [("TensorrtExecutionProvider", options), cuda, "CPUExecutionProvider"]

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
        """A session whose first provider really is ``name`` on this device, or None (the reason appended to ``errors``).

        Sets ``self.cuda_graph`` to whether that session really replays a CUDA graph: when the graph
        cannot be had, the session is made again without it.
        """
        graph = name == "cuda" and not self.info.dynamic and self.cuda_graph_requested is not False
        session = self._new_session(ort, options, name, graph, errors)
        if session is not None and graph and _provider_options(session).get("enable_cuda_graph", "1") != "1":
            errors.append("cuda + CUDA graph: onnxruntime started the CUDA provider without its graph")
            session = None
        if session is None and graph:
            graph = False
            session = self._new_session(ort, options, name, graph, errors)
        self.cuda_graph = session is not None and graph
        return session

    def _new_session(self, ort, options, name: str, graph: bool, errors: list[str]):
        label = name + (" + CUDA graph" if graph else "")
        try:
            # enable_fallback=0: newer onnxruntime then raises instead of silently retrying with
            # default provider options (older ones ignore it: the checks below catch that).
            session = ort.InferenceSession(str(self.path), sess_options=options, providers=self._chain(name, graph),
                                           enable_fallback=0)
        except Exception as exc:  # listed but cannot start, e.g. the TensorRT provider without TensorRT libraries
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            errors.append(f"{label}: {reason}")
            return None
        used = session.get_providers()[0]
        if used != _PROVIDER_NAMES[name]:
            errors.append(f"{label}: onnxruntime fell back to {used}")
            return None
        device_id = _provider_options(session).get("device_id", self._device_id)
        if name != "cpu" and device_id != self._device_id:
            errors.append(f"{label}: onnxruntime fell back to its defaults (device {device_id}, not {self._device_id})")
            return None
        return session

    def deactivate(self) -> None:
        self.session = None
        self._binding = None
        self._static = None
        super().deactivate()

    # -- inference ----------------------------------------------------------------------------
    def _infer(self, batch: torch.Tensor) -> torch.Tensor:
        if self.info.io == "frames":
            return self._infer_frames(batch)
        if not self._on_gpu:
            feed = batch.detach().to("cpu", torch.float32).contiguous().numpy()
            out = self.session.run([self._outputs[0].name], {self._input.name: feed})[0]
            return torch.from_numpy(out).to(self.device)
        return self._infer_bound(batch)

    def _infer_frames(self, batch: torch.Tensor) -> torch.Tensor:
        """A frames graph (export --io frames): (N, H, W, 3) uint8 BGR in, the (N, H, W) uint8 class map out.

        Fed through host memory on every provider: the bytes crossing are uint8 frames and a uint8
        map, 12x less than float logits, so IO binding would save little here.
        """
        feed = np.ascontiguousarray(batch.detach().to("cpu", torch.uint8).numpy())
        out = self.session.run([self._outputs[0].name], {self._input.name: feed})[0]
        return torch.from_numpy(out).to(self.device)

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
