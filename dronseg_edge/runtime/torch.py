"""PyTorch backend: runs a training checkpoint (.pt) directly.

``segment`` keeps a checkpoint's pre/post inside the backend: on a GPU on the device
(runtime/torch_frames.py), on the CPU the host implementation (runtime/host.py). On a GPU the speed
comes from fp16 weights with channels_last (17.6 -> 14.1 ms, ResNet-101 at 1280x720 on an H100,
docs/facts.md#h100-baseline) and above all from replaying the forward pass as one CUDA graph
(-> 7.8 ms): batch-1 fp16 inference is launch-bound, ~300 small kernels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dronseg_edge.checkpoint import load_checkpoint, model_from_checkpoint
from dronseg_edge.errors import DronsegError
from dronseg_edge.option_fields import one_of
from dronseg_edge.metadata import HEADS, ModelInfo
from dronseg_edge.models import SegmentationNet
from dronseg_edge.runtime import torch_frames
from dronseg_edge.runtime.base import STAGES, Backend, FrameOutputs, pad_batch
from dronseg_edge.runtime.cuda_graph import GraphCache

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WARMUP_BEFORE_CAPTURE = 3  # lets cudnn.benchmark pick its kernels before they are frozen into the graph
MAX_GRAPHS = 4  # one graph per input shape; bounded, since each holds its own activation memory


class TorchBackend(Backend):
    """Eager PyTorch inference, on CUDA with fp16/bf16, channels_last and CUDA-graph replay.

    ``precision``: fp32 | fp16 | bf16 (fp16/bf16 need a GPU); ``head``: logits | argmax (argmax
    runs on the device and returns an (N, H, W) uint8 class map, so only those bytes need to leave
    it); ``channels_last`` and ``cuda_graph`` default to on for CUDA and are ignored on the CPU.
    With ``cuda_graph`` each new input shape is captured once (~a second), then replayed.
    ``compile_mode`` (opt-in): ``torch.compile(mode=...)`` first, e.g. ``max-autotune-no-cudagraphs``
    (7.07 ms for ResNet-101 on the H100 but 421 s to compile: docs/facts.md#h100-baseline); modes with
    their own CUDA graphs (reduce-overhead, max-autotune) turn ``cuda_graph`` off. Needs Triton on GPUs.
    """

    name = "torch"
    native = "torch"
    OPTIONS = frozenset({"precision", "head", "channels_last", "cuda_graph", "compile_mode"})

    def __init__(self, path: Path, device: torch.device, precision: str = "fp32", head: str = "logits",
                 channels_last: bool | None = None, cuda_graph: bool | None = None, compile_mode: str | None = None):
        device = torch.device(str(device))  # a torch-free devices.Device too
        one_of(precision, "precision", DTYPES, " for a PyTorch checkpoint")
        if precision != "fp32" and device.type != "cuda":
            raise DronsegError(f"precision {precision} needs a CUDA GPU with a checkpoint; use fp32 on {device.type}")
        one_of(head, "head", HEADS)
        on_cuda = device.type == "cuda"
        self.precision, self.head = precision, head
        self.channels_last = on_cuda if channels_last is None else bool(channels_last)
        self.compile_mode = compile_mode or None
        own_graphs = self.compile_mode in ("reduce-overhead", "max-autotune")
        self.cuda_graph = on_cuda and not own_graphs and (True if cuda_graph is None else bool(cuda_graph))
        self._ckpt: dict[str, Any] | None = None  # the loaded checkpoint, from reading ``info`` until ``activate``
        self._hash_source = True  # whether ``info.source_sha256`` is the file's hash (from_checkpoint: not read again)
        self._graphs = GraphCache(device, max_graphs=MAX_GRAPHS, label=Path(path).name)
        self.net = None
        super().__init__(path, device)

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], device: torch.device, **options) -> "TorchBackend":
        """The backend of a checkpoint already loaded by ``load_checkpoint``: the file is not read or hashed again.

        An export has loaded its checkpoint once; parity reuses that dict instead of a second
        ``torch.load`` of a file that may be hundreds of MB (``info.source_sha256`` stays empty).
        ``options`` are the constructor's keywords.
        """
        backend = cls(Path(ckpt.get("path") or "checkpoint.pt"), device, **options)
        backend._ckpt, backend._hash_source = ckpt, False
        return backend

    def read_info(self) -> ModelInfo:
        # The whole checkpoint is loaded here (its metadata and weights are one pickle) and kept for
        # activate, so a backend whose info is read and which is then activated loads its file once.
        if self._ckpt is None:
            self._ckpt = load_checkpoint(self.path)
        info = ModelInfo.from_checkpoint(self._ckpt, with_hash=self._hash_source)
        info.precision, info.head = self.precision, self.head
        return info

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def activate(self) -> None:
        self.info  # noqa: B018  (read before the weights move into the module: it needs the checkpoint's keys)
        ckpt = self._ckpt if self._ckpt is not None else load_checkpoint(self.path)
        net = SegmentationNet(model_from_checkpoint(ckpt), head=self.head).eval()
        self._ckpt = None  # the weights now live in the module
        self.net = net.to(self.device, dtype=DTYPES[self.precision], memory_format=self.memory_format)
        if self.compile_mode:  # compiles on the first call (the warm-up before a CUDA-graph capture)
            self.net = torch.compile(self.net, mode=self.compile_mode, dynamic=False)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # input shapes are fixed per stream: tune once per shape
        self._graphs.clear()
        self._describe_provider()
        self.active = True

    def _describe_provider(self) -> None:
        parts = [self.device.type, self.precision, "channels_last" if self.channels_last else "",
                 f"torch.compile({self.compile_mode})" if self.compile_mode else ""]
        self.provider = " ".join(filter(None, parts)) + (" + CUDA graph" if self.cuda_graph else "")

    def deactivate(self) -> None:
        self._graphs.clear()
        self.net = None
        super().deactivate()

    def segment(self, frames: np.ndarray, confidence: bool = False, logits: bool = False,
                pad_to: int = 1) -> FrameOutputs:
        """``Backend.segment``: pre/post on the GPU (runtime/torch_frames.py), on the CPU the host implementation."""
        if self.device.type != "cuda":
            return super().segment(frames, confidence, logits, pad_to)
        self.check_frames(frames)
        self._ensure_active()
        stream = torch.cuda.current_stream(self.device)
        marks = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        marks[0].record(stream)
        with torch.inference_mode():
            x = torch_frames.to_model_input(torch_frames.upload(frames, self.device), self.info)
            batch, real = pad_batch(x, pad_to)
            marks[1].record(stream)
            out = self.infer(batch)[:real]
            marks[2].record(stream)
            classes, conf = torch_frames.class_maps(out, frames.shape[1], frames.shape[2], confidence)
            kept = out.float() if logits and out.ndim == 4 else None
            host = [None if t is None else t.cpu().numpy() for t in (classes, conf, kept)]  # .cpu() waits for the GPU
        marks[3].record(stream)
        marks[3].synchronize()
        return FrameOutputs(*host, {name: marks[i].elapsed_time(marks[i + 1]) for i, name in enumerate(STAGES)})

    def _infer(self, batch: torch.Tensor) -> torch.Tensor:
        return self._replay(batch) if self.cuda_graph else self._forward(batch)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, dtype=DTYPES[self.precision], non_blocking=True)
        out = self.net(x.contiguous(memory_format=self.memory_format))
        return out.float() if self.head == "logits" else out

    def _replay(self, batch: torch.Tensor) -> torch.Tensor:
        key = (tuple(batch.shape), batch.dtype)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._graphs.capture(key, batch, self._forward, warmup=WARMUP_BEFORE_CAPTURE)
            if entry is None:
                self.cuda_graph = False
                self._describe_provider()
                return self._forward(batch)
        return self._graphs.replay(entry, batch)
