"""Media for the pipeline tests, made with numpy + OpenCV (mp4v works in every OpenCV wheel)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def scene(index: int, size: tuple[int, int]) -> np.ndarray:
    """A (H, W, 3) uint8 BGR frame: gradient sky, a moving box and a road stripe, so frames differ."""
    width, height = size
    frame = np.zeros((height, width, 3), np.uint8)
    frame[..., 0] = np.linspace(40, 220, width, dtype=np.uint8)[None, :]
    frame[..., 1] = np.linspace(30, 180, height, dtype=np.uint8)[:, None]
    x = (index * 3) % max(width - width // 4, 1)
    cv2.rectangle(frame, (x, height // 4), (x + width // 4, height // 2), (20, 40, 230), -1)
    cv2.rectangle(frame, (0, height - height // 5), (width - 1, height - 1), (90, 90, 90), -1)
    return frame


def scene_mask(index: int, size: tuple[int, int]) -> np.ndarray:
    """The (H, W) uint8 classes of :func:`scene`: sky (11) above, a car (3) box, road (10) below."""
    width, height = size
    mask = np.full((height, width), 11, np.uint8)
    x = (index * 3) % max(width - width // 4, 1)
    cv2.rectangle(mask, (x, height // 4), (x + width // 4, height // 2), 3, -1)
    cv2.rectangle(mask, (0, height - height // 5), (width - 1, height - 1), 10, -1)
    return mask


def write_video(path: Path, frames: int = 24, size: tuple[int, int] = (128, 80), fps: float = 30.0,
                fourcc: str = "mp4v") -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened(), f"test setup: cannot write {path} with {fourcc}"
    for index in range(frames):
        writer.write(scene(index, size))
    writer.release()
    return path


def read_video(path: Path) -> tuple[list[np.ndarray], float, tuple[int, int]]:
    """All frames of a video, its fps and (W, H), read back with OpenCV."""
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"{path} does not open"
    fps = capture.get(cv2.CAP_PROP_FPS)
    size = (int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    return frames, fps, size
