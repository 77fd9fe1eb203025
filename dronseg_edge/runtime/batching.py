"""Fixed-batch artifacts: a static ONNX file or engine takes exactly its batch size, never fewer frames."""

from __future__ import annotations

import torch


def pad_batch(batch: torch.Tensor, size: int) -> tuple[torch.Tensor, int]:
    """Pad ``batch`` (N, ...) to ``size`` rows by repeating its last row; returns (padded, N).

    The caller keeps the first N rows of the output. Repeating a real frame (not zeros) keeps the
    padding's activations in the range the model was calibrated for. A batch of ``size`` or more
    rows is returned unchanged.
    """
    real = int(batch.shape[0])
    if real == 0:
        raise ValueError("pad_batch needs at least one row to repeat")
    if real >= size:
        return batch, real
    return torch.cat([batch, batch[-1:].expand(size - real, *batch.shape[1:])]), real
