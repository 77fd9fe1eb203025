"""The interface every backend (PyTorch, ONNX Runtime, TensorRT) implements.

Lifecycle borrowed from Polygraphy: construct (cheap, validates the file), ``activate()`` (load
onto the device), ``infer()`` any number of times, ``deactivate()``; or use it as a context
manager. Heavy imports (onnxruntime, tensorrt) happen inside the backend modules only.
"""

from __future__ import annotations

import functools
import time
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dronseg_edge.metadata import ModelInfo


class Backend(ABC):
    """Runs one model artifact.

    ``infer`` takes a float32 batch (N, 3, H, W), already normalised, at ``info.input_size``
    (H, W = height, width), on ``self.device``; it returns a tensor on ``self.device``:
    logits (N, C, H, W) float32 when ``info.head == 'logits'``, else an (N, H, W) class map.
    """

    name: str = "backend"

    def __init__(self, path: Path, device: torch.device):
        self.path = Path(path)
        self.device = device
        self.info: ModelInfo = self.read_info()
        self.provider: str = ""  # what actually runs it, e.g. "CUDAExecutionProvider" or "cuda fp16 + CUDA graph"
        self.last_inference_ms: float = float("nan")
        self.active = False

    @abstractmethod
    def read_info(self) -> ModelInfo:
        """Read the artifact's metadata without loading it onto the device."""

    @abstractmethod
    def activate(self) -> None:
        """Load the model onto ``self.device``; set ``self.provider``."""

    @abstractmethod
    def _infer(self, batch: torch.Tensor) -> torch.Tensor:
        """Run one batch (see the class docstring for shapes)."""

    def deactivate(self) -> None:
        self.active = False

    def infer(self, batch: torch.Tensor) -> torch.Tensor:
        if not self.active:
            self.activate()
            self.active = True
        start = time.perf_counter()
        out = self._infer(batch)
        self.last_inference_ms = (time.perf_counter() - start) * 1e3
        return out

    def __enter__(self) -> "Backend":
        if not self.active:
            self.activate()
            self.active = True
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    def describe(self) -> str:
        return f"{self.name} ({self.provider or self.device})"


def preprocess(frames_bgr: np.ndarray | torch.Tensor, info: ModelInfo, device: torch.device) -> torch.Tensor:
    """uint8 BGR frames (N, H, W, 3) or one frame (H, W, 3) -> normalised float32 (N, 3, h, w) on ``device``.

    Colour conversion, resizing (bilinear) to ``info.input_size`` and normalisation run on ``device``,
    so only uint8 bytes cross the bus.
    """
    frames = torch.as_tensor(frames_bgr)
    if frames.ndim == 3:
        frames = frames.unsqueeze(0)
    x = frames.to(device, non_blocking=True).permute(0, 3, 1, 2).flip(1).float().div_(255.0)
    width, height = info.input_size
    if x.shape[-2:] != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=False)
    mean, std = _normalisation(tuple(info.mean), tuple(info.std), x.device)
    return x.sub_(mean).div_(std).contiguous()


@functools.lru_cache(maxsize=16)
def _normalisation(mean: tuple, std: tuple, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    # Cached: building these tensors on a GPU every frame is a host-to-device copy that stalls the stream.
    return (torch.tensor(mean, device=device).view(1, 3, 1, 1), torch.tensor(std, device=device).view(1, 3, 1, 1))
