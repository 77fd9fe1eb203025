"""PyTorch backend: runs a training checkpoint (.pt) directly.

On a GPU the speed comes from three things (FACTS.md section 4, ResNet-101 at 1280x720 on an
H100): fp16 weights with channels_last memory (17.6 -> 14.1 ms) and, above all, replaying the whole
forward pass as one CUDA graph (-> 7.8 ms), because batch-1 fp16 inference is launch-bound: the
GPU otherwise idles between ~300 small kernels.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from dronseg_edge.checkpoint import info_from_checkpoint, load_checkpoint, model_from_checkpoint
from dronseg_edge.errors import DronsegError
from dronseg_edge.metadata import HEADS, ModelInfo
from dronseg_edge.models import SegmentationNet
from dronseg_edge.runtime.base import Backend

log = logging.getLogger(__name__)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
WARMUP_BEFORE_CAPTURE = 3  # lets cudnn.benchmark pick its kernels before they are frozen into the graph
MAX_GRAPHS = 4  # one graph per input shape; bounded, since each holds its own activation memory


class TorchBackend(Backend):
    """Eager PyTorch inference, on CUDA with fp16/bf16, channels_last and CUDA-graph replay.

    ``precision``: fp32 | fp16 | bf16 (fp16/bf16 need a GPU); ``head``: logits | argmax (argmax
    runs on the device and returns an (N, H, W) uint8 class map, so only those bytes need to leave
    it); ``channels_last`` and ``cuda_graph`` default to on for CUDA and are ignored on the CPU.
    With ``cuda_graph`` the first batch of each shape is captured once, later batches of that
    shape replay it (a new shape costs one more capture, ~a second).
    ``compile_mode`` (opt-in): wrap the model in ``torch.compile(mode=...)`` first, e.g.
    ``max-autotune-no-cudagraphs`` (7.07 ms eager for ResNet-101 on the H100, but 421 s to
    compile: FACTS.md section 4); modes that make their own CUDA graphs (reduce-overhead,
    max-autotune) turn ``cuda_graph`` off. Needs a working Triton on GPUs (not on every Jetson).
    """

    name = "torch"

    def __init__(self, path: Path, device: torch.device, precision: str = "fp32", head: str = "logits",
                 channels_last: bool | None = None, cuda_graph: bool | None = None, compile_mode: str | None = None):
        if precision not in DTYPES:
            raise DronsegError(f"precision {precision!r} is not one of {', '.join(DTYPES)} for a PyTorch checkpoint")
        if precision != "fp32" and device.type != "cuda":
            raise DronsegError(f"precision {precision} needs a CUDA GPU with a checkpoint; use fp32 on {device.type}")
        if head not in HEADS:
            raise DronsegError(f"head {head!r} is not one of {', '.join(HEADS)}")
        on_cuda = device.type == "cuda"
        self.precision = precision
        self.head = head
        self.channels_last = on_cuda if channels_last is None else bool(channels_last)
        self.compile_mode = compile_mode or None
        own_graphs = self.compile_mode in ("reduce-overhead", "max-autotune")
        self.cuda_graph = on_cuda and not own_graphs and (True if cuda_graph is None else bool(cuda_graph))
        self._ckpt = None
        self._graphs: dict[tuple, tuple] = {}
        self.net = None
        super().__init__(path, device)

    def read_info(self) -> ModelInfo:
        self._ckpt = load_checkpoint(self.path)
        info = info_from_checkpoint(self._ckpt)
        info.precision, info.head = self.precision, self.head
        return info

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def activate(self) -> None:
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

    def _describe_provider(self) -> None:
        parts = [self.device.type, self.precision]
        if self.channels_last:
            parts.append("channels_last")
        if self.compile_mode:
            parts.append(f"torch.compile({self.compile_mode})")
        self.provider = " ".join(parts) + (" + CUDA graph" if self.cuda_graph else "")

    def deactivate(self) -> None:
        self._graphs.clear()
        self.net = None
        super().deactivate()

    @torch.inference_mode()
    def _infer(self, batch: torch.Tensor) -> torch.Tensor:
        if self.cuda_graph:
            with torch.cuda.device(self.device):  # graphs capture on the current device
                return self._replay(batch)
        return self._forward(batch)

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, dtype=DTYPES[self.precision], non_blocking=True)
        out = self.net(x.contiguous(memory_format=self.memory_format))
        return out.float() if self.head == "logits" else out

    def _replay(self, batch: torch.Tensor) -> torch.Tensor:
        key = (tuple(batch.shape), batch.dtype)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(batch, key)
            if entry is None:  # capture failed: already fell back to eager
                return self._forward(batch)
        graph, static_in, static_out = entry
        static_in.copy_(batch, non_blocking=True)
        graph.replay()
        # The graph writes every replay into the same buffer; a copy keeps earlier results intact.
        return static_out.clone()

    def _capture(self, batch: torch.Tensor, key: tuple):
        static_in = torch.empty(batch.shape, dtype=batch.dtype, device=self.device)
        static_in.copy_(batch)
        stream = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(stream)
        try:
            with torch.cuda.stream(side):
                for _ in range(WARMUP_BEFORE_CAPTURE):
                    self._forward(static_in)
            stream.wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._forward(static_in)
        except RuntimeError as exc:  # an op that cannot be captured: run eagerly rather than fail
            log.warning("CUDA graph capture failed (%s); running %s eagerly", str(exc).splitlines()[0][:120], self.path.name)
            torch.cuda.synchronize(self.device)
            self.cuda_graph = False
            self._graphs.clear()
            self._describe_provider()
            return None
        if len(self._graphs) >= MAX_GRAPHS:
            self._graphs.clear()
        self._graphs[key] = (graph, static_in, static_out)
        return self._graphs[key]
