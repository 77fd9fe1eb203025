"""A stand-in for ``cv2.VideoCapture`` that records how each capture was opened and plays scripted frames.

For what this machine's OpenCV cannot do for real: GStreamer pipelines and CSI cameras (no GStreamer
in pip's wheel), RTSP servers, hardware decoders. Each open is recorded with its target, backend,
parameters and the value of ``OPENCV_FFMPEG_CAPTURE_OPTIONS`` at that moment, which is what OpenCV
itself would read.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import cv2
import numpy as np
from testkit import scene

from dronseg_edge.pipeline.capture_options import ENV_VAR


class FakeCapture:
    """``frames`` frames of ``size`` (None: endless, one every ``delay_s``), then reads fail."""

    def __init__(self, frames: int | None = 3, size: tuple[int, int] = (32, 24), opened: bool = True,
                 acceleration: float = 0.0, delay_s: float = 0.0):
        self.left, self.size, self.opened = frames, size, opened
        self.acceleration, self.delay_s = acceleration, delay_s
        self.released = False

    def isOpened(self) -> bool:
        return self.opened

    def read(self):
        time.sleep(self.delay_s)
        if self.left is not None:
            if self.left <= 0:
                return False, None
            self.left -= 1
        return True, scene(self.left or 0, self.size)

    def get(self, prop) -> float:
        if prop == cv2.CAP_PROP_FPS:
            return 30.0
        if prop == cv2.CAP_PROP_HW_ACCELERATION:
            return self.acceleration
        return 0.0  # no frame count: live

    def set(self, prop, value) -> bool:
        return True

    def release(self) -> None:
        self.released = True


@dataclass
class Open:
    target: str
    api: int
    params: list
    env: str | None  # OPENCV_FFMPEG_CAPTURE_OPTIONS while it opened


class CaptureRecorder:
    """Each open records an :class:`Open` and returns the next scripted capture (an unopened one once
    the script is used up). ``install`` puts it in place of cv2.VideoCapture, for the backend
    ``only_api`` alone if given (the others open for real)."""

    def __init__(self, *script: FakeCapture):
        self.script = list(script)
        self.calls: list[Open] = []

    def __call__(self, target, api=cv2.CAP_ANY, params=None):
        self.calls.append(Open(str(target), api, list(params or []), os.environ.get(ENV_VAR)))
        return self.script.pop(0) if self.script else FakeCapture(0, opened=False)

    def install(self, monkeypatch, only_api: int | None = None) -> "CaptureRecorder":
        real = cv2.VideoCapture

        def video_capture(target, api=cv2.CAP_ANY, *rest):
            if only_api is not None and api != only_api:
                return real(target, api, *rest)
            return self(target, api, *rest)

        monkeypatch.setattr(cv2, "VideoCapture", video_capture)
        return self


def frame_shapes(records) -> set[tuple[int, ...]]:
    return {np.asarray(r.frame).shape for r in records}
