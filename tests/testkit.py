"""Helpers shared by the tests (import as ``from testkit import ...``; conftest modules are not importable
reliably under pytest's prepend import mode, several folders have one)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dronseg_edge.checkpoint import save_checkpoint
from dronseg_edge.classes import CLASS_NAMES, IMAGENET_MEAN, IMAGENET_STD, PALETTE
from dronseg_edge.models import build_model

TINY_ARCH = "lraspp_mobilenet_v3_large"
TINY_SIZE = (96, 64)  # (width, height): small enough for 2 CPU cores, still divisible by 32

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible to torch)")


def make_checkpoint(path: Path, arch: str = TINY_ARCH, size: tuple[int, int] = TINY_SIZE, seed: int = 0) -> Path:
    """A randomly initialised model with *calibrated* BatchNorm statistics, saved as a checkpoint.

    Random BN statistics make logits explode (FACTS.md section 4); a few forward passes in train
    mode give them sane values so fp16/int8 comparisons mean something.
    """
    torch.manual_seed(seed)
    model = build_model(arch, weights="none")
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(2, 3, size[1], size[0]))
    model.eval()
    return save_checkpoint(path, {
        "model": model.state_dict(),
        "arch": arch,
        "aux_loss": False,
        "class_names": list(CLASS_NAMES),
        "palette": [list(c) for c in PALETTE],
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "input_size": list(size),
        "epoch": 0,
        "step": 0,
    })


def break_onnx_classifier(source: Path, dest: Path | None = None) -> Path:
    """Negate the final classifier weights of an exported LR-ASPP graph: a broken artifact that parity must fail."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(source))
    for tensor in graph.graph.initializer:
        if "high_classifier.weight" in tensor.name:
            tensor.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(tensor), tensor.name))
    dest = Path(dest or source)
    onnx.save(graph, str(dest))
    return dest


def sabotage_onnx_export(monkeypatch) -> None:
    """Make every later export write a broken graph (see ``break_onnx_classifier``)."""
    import dronseg_edge.export.artifact as artifact

    original = artifact._write_onnx

    def broken(model, dest, *args, **kwargs):
        notes = original(model, dest, *args, **kwargs)
        break_onnx_classifier(dest)
        return notes

    monkeypatch.setattr(artifact, "_write_onnx", broken)
