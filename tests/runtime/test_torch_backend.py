import numpy as np
import torch

from dronseg_edge.runtime.base import preprocess
from dronseg_edge.runtime.registry import load_backend


def test_torch_backend_runs_checkpoint(tiny_checkpoint):
    backend = load_backend(tiny_checkpoint, device="cpu")
    assert backend.info.input_size == (96, 64)
    frame = np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    with backend:
        logits = backend.infer(preprocess(frame, backend.info, backend.device))
    assert logits.shape == (1, 12, 64, 96)
    assert torch.isfinite(logits).all()
