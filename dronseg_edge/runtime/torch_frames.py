"""A checkpoint's pre/post-processing on its GPU: uint8 frames up, the uint8 class map down.

The torch backend's ``segment`` on CUDA (on the CPU it uses the host implementation, runtime/host.py,
whose OpenCV resize of uint8 frames is the fastest there). The frames cross the bus as uint8 through
pinned memory (torch's caching host allocator), are turned to float, shrunk with the same weights as
the host's ``cv2.INTER_AREA`` (``host.resize_matrices``, two matrix products) and normalised on the
device; the logits are upsampled bilinearly to the frame's size and arg-maxed there (a fraction of a
millisecond on a GPU: docs/facts.md#pipeline-timings), so only the uint8 class map (and confidence)
comes back. Tiling asks for the model-size logits as well (``logits=True``).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from dronseg_edge.metadata import ModelInfo
from dronseg_edge.runtime.host import HALVES_UP, resize_matrices, scale_and_shift

# Bilinear logits for a 4K frame take C x 2160 x 3840 x 4 bytes (~400 MB for 12 classes); past
# this the class map is resized (nearest) instead, to keep memory bounded on an 8 GB Jetson.
MAX_UPSAMPLED_LOGITS_BYTES = 512 << 20


def upload(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """(N, H, W, 3) uint8 host frames -> the same on ``device``, copied from pinned memory without blocking."""
    return torch.from_numpy(np.ascontiguousarray(frames)).pin_memory().to(device, non_blocking=True)


def to_model_input(frames: torch.Tensor, info: ModelInfo) -> torch.Tensor:
    """(N, H, W, 3) uint8 BGR frames on the device -> normalised float32 (N, 3, h, w) RGB at ``info.input_size``."""
    x = frames.permute(0, 3, 1, 2).flip(1).float()
    height, width = x.shape[-2:]
    if (width, height) != tuple(info.input_size):
        rows, columns = _resize_weights((width, height), tuple(info.input_size), x.device)
        x = torch.matmul(torch.matmul(rows, x), columns.T)  # (h, H) @ (N, 3, H, W) @ (W, w)
        halves = (width, height) == (2 * info.input_size[0], 2 * info.input_size[1])
        x = x.add_(HALVES_UP if halves else 0.0).round_()  # as the host's uint8 resize (and training's images) round
    scale, shift = _normalisation(tuple(info.mean), tuple(info.std), x.device)
    return x.mul_(scale).add_(shift).contiguous()


def class_maps(out: torch.Tensor, height: int, width: int, confidence: bool):
    """The model's output ((N, C, h, w) logits or (N, h, w) classes) -> ((N, H, W) uint8 classes,
    (N, H, W) uint8 confidence or None), on the device."""
    conf = None
    if out.ndim == 4:
        channels = out.shape[1]
        if out.shape[-2:] != (height, width) and channels * height * width * 4 <= MAX_UPSAMPLED_LOGITS_BYTES:
            out = F.interpolate(out.float(), size=(height, width), mode="bilinear", align_corners=False)
        if confidence:
            top = out.amax(dim=1, keepdim=True)
            conf = (255.0 / torch.exp(out - top).sum(dim=1)).round_().clamp_(0, 255).to(torch.uint8)
        out = out.argmax(dim=1)
    classes = out.to(torch.uint8)
    if classes.shape[-2:] != (height, width):
        classes = F.interpolate(classes[:, None], size=(height, width), mode="nearest-exact")[:, 0]
    if conf is not None and conf.shape[-2:] != (height, width):
        conf = F.interpolate(conf[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)
        conf = conf.round_().clamp_(0, 255).to(torch.uint8)[:, 0]
    return classes, conf


@functools.lru_cache(maxsize=8)
def _resize_weights(src: tuple[int, int], dst: tuple[int, int], device: torch.device):
    rows, columns = resize_matrices(src, dst)
    return torch.from_numpy(rows).to(device), torch.from_numpy(columns).to(device)


@functools.lru_cache(maxsize=8)
def _normalisation(mean: tuple, std: tuple, device: torch.device):
    """host's (scale, shift) shaped (1, 3, 1, 1) and cached on the device (building them every frame
    would be a host-to-device copy that stalls the stream)."""
    return tuple(torch.from_numpy(a).view(1, 3, 1, 1).to(device) for a in scale_and_shift(mean, std))
