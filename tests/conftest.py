"""Shared fixtures: tiny checkpoints and synthetic data (helpers live in testkit.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from testkit import TINY_SIZE, make_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A small LR-ASPP checkpoint at 96x64 with calibrated (not trained) weights."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A 40-image synthetic data set at 96x64 in the Kaggle layout (no video)."""
    from dronseg_edge.data.synthetic import synthesize

    root = tmp_path_factory.mktemp("synth") / "data"
    synthesize(root, images=40, size=TINY_SIZE, video_frames=0, seed=0, test_fraction=0.2)
    return root
