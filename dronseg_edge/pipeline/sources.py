"""Frame sources: a video file, an image, a folder or glob of images, a camera, an RTSP/HTTP stream.

Every source yields the same :class:`FrameRecord`, so the rest of the pipeline never asks where a
frame came from. ``open_source(spec)`` picks the kind from the command-line text.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from dronseg_edge.errors import DronsegError
from dronseg_edge.media import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt", "file")
# A decoder error mid-file makes read() fail for the damaged frames only; past this many failures
# in a row the file is taken to have ended.
MAX_CONSECUTIVE_FAILURES = 30
OPEN_TIMEOUT_MS = 10_000
READ_TIMEOUT_MS = 5_000
SOURCE_HELP = "pass a video file, an image, a folder or glob of images, a camera index (0) or an rtsp:// URL"


@dataclass
class FrameRecord:
    """One decoded frame and where it came from.

    ``index``: position in the source (0-based, before any stride); ``timestamp``: seconds from the
    start (video: the container's presentation time, so variable-frame-rate files keep their
    timing, or index / fps where it has none; camera and stream: wall clock since opening; images: None);
    ``frame``: (H, W, 3) uint8 BGR; ``name``: stem for output files (``000042`` or the image's stem).
    """

    index: int
    timestamp: float | None
    frame: np.ndarray
    source: str
    name: str
    decode_ms: float = 0.0


class Source(ABC):
    """A producer of :class:`FrameRecord`; ``frames()`` may be called once."""

    kind = "source"
    live_default = False  # cameras and streams: process only the newest frame unless told otherwise

    def __init__(self, name: str):
        self.name = name
        self.fps: float | None = None
        self.frame_count: int | None = None
        self.corrupt = 0  # frames or files that could not be decoded and were skipped
        self.reconnects = 0
        self._stop = threading.Event()

    @abstractmethod
    def frames(self, stride: int = 1) -> Iterator[FrameRecord]:
        """Yield every ``stride``-th frame."""

    def stop(self) -> None:
        """Ask a blocking ``frames()`` (reconnect back-off) to give up soon; safe from any thread."""
        self._stop.set()

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence OpenCV's and FFmpeg's own stderr lines (e.g. a failed H.264 probe) for a moment.

    They write to file descriptor 2 from C, so only redirecting the descriptor hides them; use it
    in the main thread before worker threads start, or their messages would vanish too.
    """
    previous = cv2.getLogLevel() if hasattr(cv2, "getLogLevel") else None
    if previous is not None:
        cv2.setLogLevel(0)
    try:
        saved = os.dup(2)
    except OSError:
        saved = None
    try:
        if saved is not None:
            with open(os.devnull, "wb") as devnull:
                os.dup2(devnull.fileno(), 2)
        yield
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)
        if previous is not None:
            cv2.setLogLevel(previous)


def _sane_fps(value: float) -> float | None:
    return float(value) if value and math.isfinite(value) and 1.0 <= value <= 1000.0 else None


class VideoSource(Source):
    """A video file decoded with OpenCV's FFmpeg backend; damaged frames are skipped and counted.

    Frames come upright: a display rotation in the file (phones, some drones) is applied, as
    players do. OpenCV rather than PyAV: both wrap the same libavcodec and decode at the same speed
    here (benchmarks/README.md#decoding), and OpenCV applies the rotation itself.
    """

    kind = "video"

    def __init__(self, path: Path):
        super().__init__(str(path))
        self.path = Path(path)
        if self.path.stat().st_size == 0:
            raise DronsegError(f"video {self.path} is empty (0 bytes) and has no frames: {SOURCE_HELP}")
        with quiet_native_stderr():
            self.capture = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not self.capture.isOpened():
            raise DronsegError(f"video {self.path} cannot be opened: it has no video stream, is damaged, or uses a "
                               f"codec this FFmpeg lacks (check it with `ffprobe {self.path}`)")
        if hasattr(cv2, "CAP_PROP_ORIENTATION_AUTO"):  # the default in OpenCV's FFmpeg backend; said, not assumed
            self.capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)
        self.fps = _sane_fps(self.capture.get(cv2.CAP_PROP_FPS))
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.frame_count = count if count > 0 else None
        self.size = (int(self.capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        if self.frame_count is None and self.size[0] <= 0:
            raise DronsegError(f"video {self.path} has no frames: check it plays, e.g. with `ffprobe {self.path}`")

    def frames(self, stride: int = 1) -> Iterator[FrameRecord]:
        position, failures, yielded, last_time = 0, 0, 0, -1.0
        fps = self.fps or 30.0
        while not self._stop.is_set():
            wanted = position % stride == 0
            start = time.perf_counter()
            if wanted:
                ok, frame = self.capture.read()
            else:
                ok, frame = self.capture.grab(), None
            decode_ms = (time.perf_counter() - start) * 1e3
            if not ok:
                failures += 1
                position += 1
                if failures > MAX_CONSECUTIVE_FAILURES:
                    break
                continue
            if failures:
                self._count_corrupt(failures, position - failures)
                failures = 0
            if wanted:
                # The frame's presentation time from the container, relative to the stream's start;
                # a file without timestamps reads 0 for every frame, so a time that fails to advance
                # falls back to the nominal rate.
                seconds = self.capture.get(cv2.CAP_PROP_POS_MSEC) / 1e3
                if not (math.isfinite(seconds) and seconds > last_time):
                    seconds = position / fps
                last_time = seconds
                yielded += 1
                yield FrameRecord(position, seconds, frame, self.name, f"{position:06d}", decode_ms)
            position += 1
        # Failures before the container's frame count are damaged frames; past it, the end of the file.
        if failures and self.frame_count:
            self._count_corrupt(min(failures, max(self.frame_count - (position - failures), 0)), position - failures)
        if yielded == 0 and not self._stop.is_set():
            raise DronsegError(f"video {self.path} has no readable frames: check it plays, e.g. with `ffprobe {self.path}`")

    def _count_corrupt(self, count: int, position: int) -> None:
        if count > 0:
            self.corrupt += count
            log.warning("video %s: skipped %d damaged frame(s) from frame %d on", self.path, count, position)

    def close(self) -> None:
        super().close()
        self.capture.release()


class ImageSource(Source):
    """Still images (one file, a folder, a glob); each keeps its own size, unreadable files are skipped."""

    kind = "images"

    def __init__(self, paths: list[Path], name: str):
        super().__init__(name)
        if not paths:
            raise DronsegError(f"{name} holds no images ({', '.join(IMAGE_SUFFIXES)}): {SOURCE_HELP}")
        self.paths = list(paths)
        self.frame_count = len(self.paths)
        self.names = _unique_stems(self.paths)

    @classmethod
    def from_folder(cls, folder: Path) -> "ImageSource":
        files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        return cls(_keep_images(files, str(folder)), str(folder))

    @classmethod
    def from_glob(cls, pattern: str) -> "ImageSource":
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
        if not files:
            raise DronsegError(f"source {pattern!r} matches no files: {SOURCE_HELP}")
        return cls(_keep_images(files, pattern), pattern)

    def frames(self, stride: int = 1) -> Iterator[FrameRecord]:
        yielded = 0
        for index in range(0, len(self.paths), stride):
            if self._stop.is_set():
                return
            path = self.paths[index]
            start = time.perf_counter()
            frame = _read_image(path)
            decode_ms = (time.perf_counter() - start) * 1e3
            if frame is None:
                self.corrupt += 1
                log.warning("image %s cannot be decoded (truncated or not an image); skipped", path)
                continue
            yielded += 1
            yield FrameRecord(index, None, frame, str(path), self.names[index], decode_ms)
        if yielded == 0 and not self._stop.is_set():
            raise DronsegError(f"none of the {len(self.paths)} image(s) in {self.name} can be decoded: replace them")


def _read_image(path: Path) -> np.ndarray | None:
    """(H, W, 3) uint8 BGR, EXIF-rotated; grey, alpha and 16-bit images are converted; None if unreadable."""
    try:
        data = np.fromfile(path, dtype=np.uint8)  # not cv2.imread: it cannot open non-ASCII paths on Windows
    except OSError:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None


def _keep_images(files: list[Path], where: str) -> list[Path]:
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        log.warning("skipped %d non-image file(s) in %s (e.g. %s)", len(others), where, others[0].name)
    return images


def _unique_stems(paths: list[Path]) -> list[str]:
    """Output names: the image stem, with the index appended where two images share a stem."""
    stems = [p.stem for p in paths]
    seen: dict[str, int] = {}
    for stem in stems:
        seen[stem] = seen.get(stem, 0) + 1
    return [stem if seen[stem] == 1 else f"{stem}_{i:06d}" for i, stem in enumerate(stems)]


class CaptureSource(Source):
    """A live capture (camera or network stream); when it stops it is reopened with back-off.

    ``reconnect_s`` bounds the time spent reopening before giving up with a DronsegError.
    ``open_capture`` (a callable returning an opened capture or None) exists for tests.
    """

    live_default = True

    def __init__(self, name: str, open_capture: Callable[[], object | None], reconnect_s: float = 30.0):
        super().__init__(name)
        self.reconnect_s = float(reconnect_s)
        self._open_capture = open_capture
        with quiet_native_stderr():
            self.capture = open_capture()
        if self.capture is None:
            raise DronsegError(self._cannot_open())
        self.fps = _sane_fps(self.capture.get(cv2.CAP_PROP_FPS))

    def _cannot_open(self) -> str:
        return f"{self.kind} {self.name} cannot be opened: {SOURCE_HELP}"

    def frames(self, stride: int = 1) -> Iterator[FrameRecord]:
        start_time = time.monotonic()
        position = 0
        while not self._stop.is_set():
            start = time.perf_counter()
            ok, frame = self.capture.read()
            decode_ms = (time.perf_counter() - start) * 1e3
            if not ok or frame is None:
                self._reconnect()
                continue
            if position % stride == 0:
                yield FrameRecord(position, time.monotonic() - start_time, frame, self.name, f"{position:06d}", decode_ms)
            position += 1

    def _reconnect(self) -> None:
        self.capture.release()
        log.warning("%s %s stopped; reopening for up to %.0f s", self.kind, self.name, self.reconnect_s)
        began = time.monotonic()
        delay = 0.25
        while not self._stop.is_set():
            remaining = self.reconnect_s - (time.monotonic() - began)
            if remaining <= 0:
                break
            if self._stop.wait(min(delay, remaining)):
                return
            delay = min(delay * 2, 5.0)
            capture = self._open_capture()
            if capture is not None:
                self.capture = capture
                self.reconnects += 1
                log.warning("%s %s reopened after %.1f s", self.kind, self.name, time.monotonic() - began)
                return
        if not self._stop.is_set():
            raise DronsegError(
                f"{self.kind} {self.name} stopped and could not be reopened within {self.reconnect_s:g} s: "
                "check the device or network, or allow longer with --reconnect-s"
            )

    def close(self) -> None:
        super().close()
        self.capture.release()


class CameraSource(CaptureSource):
    kind = "camera"

    def __init__(self, index: int, reconnect_s: float = 30.0, open_capture=None):
        self.index = int(index)
        super().__init__(str(index), open_capture or (lambda: _opened(cv2.VideoCapture(self.index))), reconnect_s)

    def _cannot_open(self) -> str:
        return (f"camera {self.index} cannot be opened (no such device, or busy): list cameras with "
                "`ls /dev/video*` or `v4l2-ctl --list-devices` and pass its index")


class StreamSource(CaptureSource):
    kind = "stream"

    def __init__(self, url: str, reconnect_s: float = 30.0, open_capture=None):
        super().__init__(url, open_capture or (lambda: _open_stream(url)), reconnect_s)

    def _cannot_open(self) -> str:
        return (f"stream {self.name} cannot be opened within {OPEN_TIMEOUT_MS // 1000} s: check the URL, "
                "credentials and network (try it with `ffplay URL`)")


def _opened(capture):
    if capture.isOpened():
        return capture
    capture.release()
    return None


def _open_stream(url: str):
    params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
    return _opened(cv2.VideoCapture(url, cv2.CAP_FFMPEG, params))


class FramesSource(Source):
    """Wraps any iterable of (H, W, 3) uint8 BGR arrays (or FrameRecords), e.g. a generator; for the Python API."""

    kind = "frames"

    def __init__(self, frames: Iterable, name: str = "frames", fps: float | None = None):
        super().__init__(name)
        self._frames = frames
        self.fps = fps

    def frames(self, stride: int = 1) -> Iterator[FrameRecord]:
        for position, item in enumerate(self._frames):
            if self._stop.is_set():
                return
            if position % stride:
                continue
            if isinstance(item, FrameRecord):
                yield item
                continue
            frame = np.asarray(item)
            if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
                raise DronsegError(f"frame {position} of {self.name} is {frame.dtype} {frame.shape}; expected (H, W, 3) uint8 BGR")
            timestamp = position / self.fps if self.fps else None
            yield FrameRecord(position, timestamp, frame, self.name, f"{position:06d}")


def open_source(spec, reconnect_s: float = 30.0) -> Source:
    """The source named by ``spec``: a Source, camera index, URL, folder, glob, image or video path."""
    if isinstance(spec, Source):
        return spec
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit() and not Path(spec).exists()):
        return CameraSource(int(spec), reconnect_s)
    text = str(spec)
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        if scheme not in STREAM_SCHEMES:
            raise DronsegError(f"source {text}: scheme {scheme}:// is not supported; use one of {', '.join(STREAM_SCHEMES)}")
        return StreamSource(text, reconnect_s)
    path = Path(text).expanduser()
    if path.is_dir():
        return ImageSource.from_folder(path)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return ImageSource([path], str(path))
        return VideoSource(path)
    if any(ch in text for ch in "*?["):
        return ImageSource.from_glob(text)
    raise DronsegError(f"source {text} does not exist: {SOURCE_HELP}")
