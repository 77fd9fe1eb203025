"""Choosing the torch device from ``--device auto|cpu|cuda|cuda:N``."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from dronseg_edge.errors import BackendUnavailable, DronsegError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks the first CUDA GPU when there is one, else the CPU."""
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise BackendUnavailable(
                f"--device {name}: no CUDA GPU is visible to torch {torch.__version__}; use --device cpu "
                "or install a CUDA build of torch (on Jetson: NVIDIA's JetPack wheel)"
            )
        try:
            device = torch.device(name)
        except RuntimeError:
            raise DronsegError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N") from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DronsegError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
        return device
    raise DronsegError(f"--device {name!r} is not a device: use auto, cpu, cuda or cuda:N")


def device_description(device: torch.device) -> str:
    """Human-readable name, e.g. 'NVIDIA H100 80GB HBM3 (sm90)' or 'cpu (2 threads)'."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return f"{torch.cuda.get_device_name(index)} (sm{major}{minor})"
    return f"cpu ({torch.get_num_threads()} threads)"


@contextlib.contextmanager
def tf32_mode(enabled: bool | None) -> Iterator[None]:
    """Temporarily force TF32 on/off for cuDNN convolutions and matmuls (None leaves torch's flags alone)."""
    if enabled is None:
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
