"""Models and data the stages share, cached in the run's work folder (stages run one after another).

Models are random with BatchNorm statistics calibrated by a few train-mode passes (latency.py's
``sane_checkpoint``, the same recipe as tests/testkit.py ``make_checkpoint``): random statistics
give logits near 1e5 and make every fp16 comparison meaningless (docs/facts.md#h100-baseline).
"""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.gpu_check.plan import size_text
from benchmarks.latency import sane_checkpoint
from dronseg_edge.devices import resolve_device


def device_for(plan) -> torch.device:
    return resolve_device(plan.device)  # raises a clear BackendUnavailable when CUDA is gone


def checkpoint(work: Path, arch: str, size: tuple[int, int], device: torch.device) -> Path:
    """``work/checkpoints/ARCH_WxH.pt`` (benchmarks/pipeline.py caches under the same name)."""
    return sane_checkpoint(arch, size, Path(work) / "checkpoints" / f"{arch}_{size_text(size)}.pt", device)


def scenes(work: Path, size: tuple[int, int], images: int) -> Path:
    """A synthetic data set (Kaggle layout, masks included) of ``images`` scenes, all in the train list."""
    from dronseg_edge.data.synthetic import synthesize

    root = Path(work) / f"scenes_{size_text(size)}_{images}"
    if not (root / "train.csv").is_file():
        synthesize(root, images=images, size=size, video_frames=0, seed=0, test_fraction=0.0, force=True)
    return root


def release(device: torch.device) -> None:
    """Give cached GPU memory back between variants, so one variant's pool does not crowd the next."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
