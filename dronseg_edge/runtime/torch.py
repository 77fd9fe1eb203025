"""PyTorch backend: runs a training checkpoint (.pt) directly."""

from __future__ import annotations

from pathlib import Path

import torch

from dronseg_edge.checkpoint import info_from_checkpoint, load_checkpoint, model_from_checkpoint
from dronseg_edge.errors import DronsegError
from dronseg_edge.metadata import ModelInfo
from dronseg_edge.models import SegmentationNet
from dronseg_edge.runtime.base import Backend

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend(Backend):
    """Eager PyTorch inference; on CUDA optionally half precision and channels_last.

    ``precision``: fp32 | fp16 | bf16 (fp16/bf16 need a GPU); ``head``: logits | argmax.
    """

    name = "torch"

    def __init__(self, path: Path, device: torch.device, precision: str = "fp32", head: str = "logits",
                 channels_last: bool | None = None):
        if precision not in DTYPES:
            raise DronsegError(f"precision {precision!r} is not one of {', '.join(DTYPES)} for a PyTorch checkpoint")
        if precision != "fp32" and device.type != "cuda":
            raise DronsegError(f"precision {precision} needs a CUDA GPU with a checkpoint; use fp32 on {device.type}")
        self.precision = precision
        self.head = head
        self.channels_last = device.type == "cuda" if channels_last is None else channels_last
        self._ckpt = None
        super().__init__(path, device)

    def read_info(self) -> ModelInfo:
        self._ckpt = load_checkpoint(self.path)
        info = info_from_checkpoint(self._ckpt)
        info.precision, info.head = self.precision, self.head
        return info

    def activate(self) -> None:
        ckpt = self._ckpt if self._ckpt is not None else load_checkpoint(self.path)
        net = SegmentationNet(model_from_checkpoint(ckpt), head=self.head).eval()
        self._ckpt = None  # the weights now live in the module
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        self.net = net.to(self.device, dtype=DTYPES[self.precision], memory_format=memory_format)
        self.provider = f"{self.device.type} {self.precision}" + (" channels_last" if self.channels_last else "")

    @torch.inference_mode()
    def _infer(self, batch: torch.Tensor) -> torch.Tensor:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        x = batch.to(self.device, dtype=DTYPES[self.precision], memory_format=memory_format, non_blocking=True)
        out = self.net(x)
        return out.float() if self.head == "logits" else out
