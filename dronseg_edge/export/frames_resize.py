"""The shrink inside a frames graph (``export --io frames``), built from nodes that every consumer parses.

TensorRT's ONNX parser refuses ``Resize(antialias=1)`` (onnx-tensorrt ``onnxOpCheckers.cpp``: "Antialiasing
is not supported"). A resize is linear along each axis, so here it is two matrix products with the weights
of ``runtime/host.resize_frame`` (cv2.INTER_AREA when shrinking both sides, INTER_LINEAR otherwise): the
shrink of training and of the host path. ``StaticResize`` (a fixed frame size) has constant weights, applied
block by block (an INTER_AREA matrix is one (p, q) block repeated); ``DynamicResize`` (any frame size)
computes them from the frame's shape inside the graph (costs and timings: docs/export.md). In the static
graph every MatMul contracts the last axis against a constant second input, the form OpenCV 4's importer
maps to its InnerProduct layer (OpenCV 4.8 cannot take a constant first input).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.onnx.operators
from torch import nn

from dronseg_edge.errors import DronsegError
from dronseg_edge.runtime.host import HALVES_UP, resize_matrices

BLOCK_TOLERANCE = 1e-6  # repeated blocks differ only in float rounding of their positions


def _blocks(matrix: np.ndarray) -> tuple[np.ndarray, int]:
    """(block (p, q), count) with ``matrix == kron(eye(count), block)``, else (matrix, 1)."""
    dst, src = matrix.shape
    count = math.gcd(dst, src)
    p, q = dst // count, src // count
    block = matrix[:p, :q]
    if count > 1 and np.allclose(np.kron(np.eye(count, dtype=np.float32), block), matrix, rtol=0, atol=BLOCK_TOLERANCE):
        return block, count
    return matrix, 1


class _AxisResize(nn.Module):
    """(N, C, A, src) -> (N, C, A, dst): the last axis multiplied by a constant resize matrix, block by block."""

    def __init__(self, matrix: np.ndarray, batch: int, lead: tuple[int, int]):
        super().__init__()
        block, self.count = _blocks(matrix)
        self.register_buffer("weights", torch.from_numpy(np.ascontiguousarray(block.T)), persistent=False)
        q, p = self.weights.shape
        self.flat_shape = (batch, lead[0] * lead[1] * self.count, q)  # 3-D: what every consumer's MatMul takes
        self.out_shape = (batch, lead[0], lead[1], self.count * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x.reshape(self.flat_shape), self.weights).reshape(self.out_shape)


class StaticResize(nn.Module):
    """(N, H, W, 3) float frames at ``source_size`` (W, H) -> (N, 3, h, w) at ``target_size``, as resize_frame.

    ``batch``: the graph's fixed batch N (every shape in the graph is a constant), or -1 for any batch
    (the Reshapes then take -1 for N, which every consumer's Reshape accepts).
    """

    def __init__(self, source_size: tuple[int, int], target_size: tuple[int, int], batch: int):
        super().__init__()
        (width, height), (out_w, out_h) = source_size, target_size
        self.halves_up = (width, height) == (2 * out_w, 2 * out_h)
        rows, columns = resize_matrices(source_size, target_size)
        self.columns = None if width == out_w else _AxisResize(columns, batch, (3, height))
        self.rows = None if height == out_h else _AxisResize(rows, batch, (3, out_w))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        # NHWC -> NCHW moves only the channels, a cheap copy; widths first, so the one transposition of
        # rows and columns happens on planes already narrowed (ONNX Runtime's (0, 3, 2, 1) Transpose of a
        # whole 720p frame took 38 ms on 2 cores, 3x the old antialiased Resize).
        x = frames.permute(0, 3, 1, 2)
        if self.columns is not None:
            x = self.columns(x)  # (N, 3, H, w)
        if self.rows is not None:
            x = self.rows(x.transpose(2, 3)).transpose(2, 3)  # through (N, 3, w, h)
        return x + HALVES_UP if self.halves_up else x


def _weights(size: torch.Tensor, out: int, area: torch.Tensor) -> torch.Tensor:
    """(out, size) float resize weights computed in the graph: INTER_AREA's cell overlaps where ``area``, else
    INTER_LINEAR's tent around the clamped half-pixel source position (runtime/host.resize_matrix's formulas)."""
    source = torch.arange(size).to(torch.float32).unsqueeze(0)  # (1, size): left edges of the source pixels
    target = torch.arange(out).to(torch.float32).unsqueeze(1)  # (out, 1)
    length = size.to(torch.float32)
    scale = length / out
    overlap = torch.minimum((target + 1) * scale, source + 1) - torch.maximum(target * scale, source)
    area_weights = torch.relu(overlap) / scale
    position = torch.clamp((target + 0.5) * scale - 0.5, min=0.0)
    position = torch.minimum(position, length - 1)
    linear_weights = torch.relu(1.0 - torch.abs(position - source))
    return torch.where(area, area_weights, linear_weights)


class DynamicResize(nn.Module):
    """(N, H, W, 3) float frames of any size -> (N, 3, h, w) at ``target_size`` (w, h), as resize_frame."""

    def __init__(self, target_size: tuple[int, int]):
        super().__init__()
        self.out_w, self.out_h = int(target_size[0]), int(target_size[1])

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        shape = torch.onnx.operators.shape_as_tensor(frames)  # a tensor, so the trace keeps it dynamic
        height, width = shape[1], shape[2]
        area = torch.logical_and(height >= self.out_h, width >= self.out_w)
        # Heights first (fewer multiply-adds for landscape frames), each matrix on the side it contracts.
        x = torch.matmul(_weights(height, self.out_h, area), frames.permute(0, 3, 1, 2))  # (N, 3, h, W)
        x = torch.matmul(x, _weights(width, self.out_w, area).t())  # (N, 3, h, w)
        halves = torch.logical_and(height == 2 * self.out_h, width == 2 * self.out_w).to(torch.float32)
        return x + halves * HALVES_UP


def fold_channel_flip(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``model`` with its first convolution reading BGR instead of RGB (its input-channel axis reversed).

    The convolution is the one ``model`` applies to its own input (found by running ``example`` once), so
    the flip costs no node at all; a model that does not start with a 3-channel convolution is refused.
    """
    seen: list[nn.Conv2d] = []

    def hook(module, inputs):
        if inputs and inputs[0] is example and not seen:
            seen.append(module)

    candidates = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3 and m.groups == 1]
    handles = [m.register_forward_pre_hook(hook) for m in candidates]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    if not seen:
        raise DronsegError(f"--io frames needs a model whose first layer is a 3-channel convolution; "
                           f"{type(model).__name__} has none: export --io tensors")
    with torch.no_grad():
        seen[0].weight.copy_(seen[0].weight.flip(1))
    return model
