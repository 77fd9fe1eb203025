"""Fixtures for the pipeline tests: a short video and an image folder (helpers in pipeline_media.py).

The trained model they run is the suite's one (``trained_checkpoint`` in tests/conftest.py): its
training data include frames like this video's, so its class maps hold several classes with real edges.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import torch
from pipeline_media import scene, write_video


@pytest.fixture(autouse=True, scope="module")
def one_compute_thread():
    """One torch and one OpenCV worker thread while these tests run.

    The pipeline runs decode, inference and writer threads at once; on the shared 2-core CI
    machine torch's two OpenMP threads then wait on each other while descheduled, and inference
    took many times longer (docs/facts.md#cpu-threads). One thread each keeps the tests fast and
    their timing steady.
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

