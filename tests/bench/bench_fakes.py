"""Helpers for the bench tests: a fake backend whose latency is known.

Not a conftest.py on purpose: shared helpers live in importable modules (see tests/testkit.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from dronseg_edge.metadata import ModelInfo
from dronseg_edge.runtime.base import Backend

from testkit import requires_cuda  # noqa: F401  (re-exported for the bench tests)


class SleepBackend(Backend):
    """Returns zero logits after sleeping ``delay_s``; counts its calls."""

    name = "sleep"

    def __init__(self, path: Path, device: torch.device, delay_s: float = 0.0, dynamic: bool = True,
                 batch: int | None = None, input_size: tuple[int, int] = (32, 16)):
        self.delay_s, self.dynamic, self.static_batch, self.input_size = delay_s, dynamic, batch, input_size
        self.calls = 0
        super().__init__(path, device)

    def read_info(self) -> ModelInfo:
        return ModelInfo(arch="fake", input_size=self.input_size, batch=self.static_batch, dynamic=self.dynamic)

    def activate(self) -> None:
        self.provider = "sleep"

    def _infer(self, batch: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        n, _, h, w = batch.shape
        return torch.zeros(n, self.info.num_classes, h, w, device=batch.device)


def sleep_backend(**kwargs) -> SleepBackend:
    """A CPU SleepBackend (its path need not exist)."""
    return SleepBackend(Path("fake.model"), torch.device("cpu"), **kwargs)
