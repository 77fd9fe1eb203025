"""Fixtures for the pipeline tests: a short video and an image folder (helpers in pipeline_media.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pipeline_media import scene, scene_mask, write_video

from dronseg_edge.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint


@pytest.fixture(autouse=True, scope="module")
def one_compute_thread():
    """One torch and one OpenCV worker thread while these tests run.

    The pipeline runs decode, inference and writer threads at once; on the shared 2-core CI
    machine torch's two OpenMP threads then wait on each other while descheduled, and a 10 ms
    inference took 0.3-1.3 s. One thread each keeps the tests fast and their timing steady.
    """
    torch_threads, cv2_threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    yield
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(cv2_threads)


@pytest.fixture(scope="session")
def video_path(tmp_path_factory) -> Path:
    """24 frames of 128x80 at 30 fps (the tiny model's input is 96x64, so frames are resized)."""
    return write_video(tmp_path_factory.mktemp("media") / "clip.mp4")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """Three images of mixed sizes and formats, a text file and a damaged JPEG."""
    folder = tmp_path_factory.mktemp("images")
    cv2.imwrite(str(folder / "a.jpg"), scene(0, (96, 64)))
    cv2.imwrite(str(folder / "b.png"), scene(5, (120, 90)))
    cv2.imwrite(str(folder / "c.png"), cv2.cvtColor(scene(9, (64, 48)), cv2.COLOR_BGR2GRAY))
    (folder / "notes.txt").write_text("not an image")
    (folder / "d.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    return folder


@pytest.fixture(scope="session")
def trained_checkpoint(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny LR-ASPP trained for a few seconds on :func:`scene` frames, so its class maps hold
    several classes with real edges (random weights predict one or two classes everywhere, which
    would make backend comparisons nearly meaningless)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    ckpt = load_checkpoint(tiny_checkpoint)
    model = model_from_checkpoint(ckpt).train()
    mean = torch.tensor(ckpt["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(ckpt["std"]).view(1, 3, 1, 1)

    def batch(indices):
        images = torch.from_numpy(np.stack([scene(i, (96, 64))[..., ::-1] for i in indices]).copy())  # BGR -> RGB
        return (images.permute(0, 3, 1, 2).float() / 255 - mean) / std

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(30):
        indices = [4 * step + k for k in range(4)]
        y = torch.from_numpy(np.stack([scene_mask(i, (96, 64)) for i in indices])).long()
        loss = torch.nn.functional.cross_entropy(model(batch(indices))["out"], y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # MobileNetV3's BatchNorm momentum is 0.01: 30 steps barely move the running statistics, so
    # recompute them as plain averages over a few batches before switching to eval mode.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    with torch.no_grad():
        for k in range(4):
            model(batch(range(1000 + 8 * k, 1008 + 8 * k)))
    torch.set_num_threads(threads)
    state = {k: v for k, v in ckpt.items() if k not in ("path", "format", "format_version", "package_version",
                                                         "torch_version")}
    state["model"] = model.eval().state_dict()
    return save_checkpoint(tmp_path_factory.mktemp("trained") / "trained.pt", state)
