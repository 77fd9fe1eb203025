"""Shared fixtures: tiny checkpoints, the suite's one trained model and synthetic data (helpers live in testkit.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# torch.compile's kernel cache, one per environment (torch's default, /tmp/torchinductor_USER, is shared by every
# checkout on the machine): a fresh clone's suite loaded kernels another clone's since-deleted venv had built and
# aborted in them (twice, 2026-12-07). A clean machine, CI's, starts from an empty cache either way.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(sys.prefix) / "torchinductor-cache"))

from testkit import TINY_SIZE, make_checkpoint, train_tiny_run, write_scenes  # noqa: E402 (after the cache's folder)


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """Each test leaves torch's thread count as it found it (the benchmark scripts' main functions set it): with
    one thread left over, the in-process reference of test_resume_after_kill_continues_exactly no longer matched
    its subprocess's two-thread run (2026-12-07, a fresh clone's whole suite)."""
    import torch

    before = torch.get_num_threads()
    yield
    if torch.get_num_threads() != before:
        torch.set_num_threads(before)


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


@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> Path:
    """40 images at 96x64 in the Kaggle layout: 32 flat drone-like scenes and 8 frames like the pipeline tests' video."""
    root = tmp_path_factory.mktemp("scenes")
    write_scenes(root)
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, scenes):
    """The suite's one trained model: LR-ASPP trained by the package's own loop for 10 epochs on ``scenes``
    (stratified 80/20 split, so validation = 8 images; the initial weights validated as epoch 0); a FitResult
    (run_dir, best, last, ...).

    Trained once for every test that needs decisive logits (export parity, backend agreement, the
    pipeline's class maps, eval and submit).
    """
    return train_tiny_run(scenes, tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="session")
def trained_checkpoint(trained_run) -> Path:
    """weights/best.pt of ``trained_run``."""
    return trained_run.best


@pytest.fixture(scope="session")
def export_result(tmp_path_factory):
    """``export_result(checkpoint, **options)``: the ExportResult of ``export_artifact`` for ``checkpoint`` with
    ``options`` (ExportOptions fields; no parity, on the CPU), exported once per session for each checkpoint and
    options alike, each in a folder of its own. Shared by every module that asks: read it, never change it."""
    import dataclasses

    from dronseg_edge.export import ExportOptions, export_artifact

    made: dict[tuple[str, str], object] = {}

    def export(checkpoint: Path, **options):
        options = {"parity": False, "device": "cpu", **options}
        key = (str(checkpoint), repr(dataclasses.replace(ExportOptions(), **options)))
        if key not in made:
            made[key] = export_artifact(checkpoint, out_dir=tmp_path_factory.mktemp("onnx"), **options)
        return made[key]

    return export


@pytest.fixture(scope="session")
def onnx_export(export_result):
    """``onnx_export(checkpoint, **options)``: the path of ``export_result(checkpoint, **options)``'s file (the same
    export, made once per session)."""
    return lambda checkpoint, **options: export_result(checkpoint, **options).path
