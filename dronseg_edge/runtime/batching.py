"""Batches as arrays: which kind an array is (numpy or torch, told without importing torch), and padding
for fixed-batch artifacts (a static ONNX file or engine takes exactly its batch size, never fewer frames)."""

from __future__ import annotations

from typing import Any

import numpy as np


def is_torch_tensor(array: Any) -> bool:
    """True for a torch tensor, told without importing torch."""
    return type(array).__module__.split(".")[0] == "torch"


def dtype_name(array: Any) -> str:
    """'uint8', 'float32', ... for a numpy array or a torch tensor."""
    return str(array.dtype).replace("torch.", "")


def pad_batch(batch, size: int) -> tuple:
    """Pad ``batch`` (N, ...) to ``size`` rows by repeating its last row; returns (padded, N).

    The caller keeps the first N rows of the output. Repeating a real frame (not zeros) keeps the
    padding's activations in the range the model was calibrated for. A batch of ``size`` or more
    rows is returned unchanged. A numpy array or a torch tensor (torch imported only for one).
    """
    real = int(batch.shape[0])
    if real == 0:
        raise ValueError("pad_batch needs at least one row to repeat")
    if real >= size:
        return batch, real
    if not is_torch_tensor(batch):
        return np.concatenate([batch, np.repeat(batch[-1:], size - real, axis=0)]), real
    import torch

    return torch.cat([batch, batch[-1:].expand(size - real, *batch.shape[1:])]), real
