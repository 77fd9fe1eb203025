"""Where results go: overlay video or images, class-index mask PNGs, colour masks, stats.jsonl.

Each sink runs in its own thread (:class:`SinkWorker`) behind a bounded queue: OpenCV and PyAV
release the GIL while encoding, so video encoding and PNG writing proceed in parallel with
inference and with each other, and memory stays flat however long the video.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path

import cv2
import numpy as np

from dronseg_edge.errors import DronsegError
from dronseg_edge.pipeline.overlay import OverlayPlan, colorize
from dronseg_edge.pipeline.queues import put_unless_stopped
from dronseg_edge.pipeline.segmenter import Result
from dronseg_edge.pipeline.video_writer import VideoWriter, encoders_for, open_video_writer

log = logging.getLogger(__name__)

# Level 1 without row filters: faster than OpenCV's default for class maps, which are mostly long
# runs of one value anyway (docs/facts.md#pipeline-timings).
PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    PNG_FAST += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
JPEG_QUALITY = [cv2.IMWRITE_JPEG_QUALITY, 90]
DEFAULT_FPS = 30.0
MAX_FILL_S = 10.0  # longest gap filled with the previous overlay; a longer one is cut short


class Sink(ABC):
    """Consumes Results in order; ``close()`` finalises whatever it wrote (idempotent)."""

    name = "sink"

    def __init__(self):
        self.frames = 0
        self.write_ms = 0.0

    def write(self, result: Result) -> None:
        start = time.perf_counter()
        self._write(result)
        self.write_ms += (time.perf_counter() - start) * 1e3
        self.frames += 1

    @abstractmethod
    def _write(self, result: Result) -> None: ...

    def close(self) -> None:
        pass

    @abstractmethod
    def outputs(self) -> dict[str, str]:
        """What was written: {kind: path}."""


def _imwrite(path: Path, image: np.ndarray, params: list[int]) -> None:
    """Write an image under a temporary name and rename it, so a killed run leaves no half file."""
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    if not cv2.imwrite(str(tmp), image, params):
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise DronsegError(f"cannot write {path}: the disk is full or the folder is not writable; choose another --out")
    os.replace(tmp, path)


class MaskSink(Sink):
    """``masks/{name}.png``: single-channel uint8 class indices at the frame's size."""

    name = "masks"

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    def _write(self, result: Result) -> None:
        _imwrite(self.folder / f"{result.name}.png", result.mask, PNG_FAST)

    def outputs(self) -> dict[str, str]:
        return {"masks": str(self.folder)}


class ColorMaskSink(MaskSink):
    """``color/{name}.png``: the class map in the palette's colours."""

    name = "color"

    def __init__(self, folder: Path, lut: np.ndarray):
        super().__init__(folder)
        self.lut = lut

    def _write(self, result: Result) -> None:
        _imwrite(self.folder / f"{result.name}.png", colorize(result.mask, self.lut), PNG_FAST)

    def outputs(self) -> dict[str, str]:
        return {"color": str(self.folder)}


class OverlayImageSink(MaskSink):
    """``overlay/{name}.jpg``: for image sources, whose sizes may differ (a video cannot hold them)."""

    name = "overlay"

    def __init__(self, folder: Path, overlay: OverlayPlan):
        super().__init__(folder)
        self.overlay = overlay

    def _write(self, result: Result) -> None:
        _imwrite(self.folder / f"{result.name}.jpg", self.overlay.image(result), JPEG_QUALITY)

    def outputs(self) -> dict[str, str]:
        return {"overlay": str(self.folder)}


class VideoSink(Sink):
    """The overlay video (mp4, the input's fps and size), written to ``.NAME.partial.mp4`` and
    renamed by ``close()``, so an interrupted run still leaves a finalised, playable file.
    ``codec``: a ``--codec`` choice (:data:`~dronseg_edge.pipeline.video_writer.VIDEO_CODECS`);
    ``auto`` is H.264 where PyAV is installed, else mp4v.

    Frames that were not segmented (--stride, frames dropped in --live mode, damaged frames) are
    filled with the previous overlay, so the video keeps the source's timeline and plays at its
    speed. Frames of another size (a stream that changed resolution) are resized to the first one's.
    """

    name = "video"

    def __init__(self, path: Path, fps: float | None, overlay: OverlayPlan, codec: str = "auto"):
        super().__init__()
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        if fps is None:
            log.warning("the source reports no frame rate; the overlay video is written at %g fps", DEFAULT_FPS)
        self.fps = fps or DEFAULT_FPS
        self.overlay = overlay
        encoders_for(codec)  # an explicit --codec this machine cannot write fails now, not at the first frame
        self.requested_codec = codec
        self.size: tuple[int, int] | None = None
        self._writer: VideoWriter | None = None
        self._closed = False
        self._warned = False
        self._last: tuple[int, np.ndarray] | None = None
        self.video_frames = 0

    @property
    def codec(self) -> str | None:
        """The encoder writing the video (``libx264``, ``h264_nvenc``, ``mp4v``, ...); None before the first frame."""
        return self._writer.codec if self._writer is not None else None

    def _open(self, size: tuple[int, int]) -> None:
        self._writer = open_video_writer(self.tmp, size, self.fps, self.requested_codec)
        self.size = size

    def _write(self, result: Result) -> None:
        image = self.overlay.image(result)
        size = (image.shape[1], image.shape[0])
        if self._writer is None:
            self._open(size)
        elif size != self.size:
            if not self._warned:
                log.warning("frame %d is %dx%d, the video %dx%d: resized", result.index, *size, *self.size)
                self._warned = True
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_LINEAR)
        if self._last is not None:
            gap = min(result.index - self._last[0] - 1, int(self.fps * MAX_FILL_S))
            for _ in range(max(gap, 0)):
                self._writer.write(self._last[1])
            self.video_frames += max(gap, 0)
        self._writer.write(image)
        self.video_frames += 1
        self._last = (result.index, image)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception as exc:  # FFmpegError, OSError: the index could not be written
                with contextlib.suppress(OSError):
                    self.tmp.unlink()
                raise DronsegError(f"cannot finish video {self.path}: {exc}; free some space or choose another "
                                   "--out") from None
            if self.frames:
                os.replace(self.tmp, self.path)
                return
        with contextlib.suppress(OSError):
            self.tmp.unlink()

    def outputs(self) -> dict[str, str]:
        return {"video": str(self.path)} if self.frames else {}


class StatsSink(Sink):
    """``stats.jsonl``: one JSON line per frame (index, timestamp in s, share of each class by name).

    Each line is flushed as written, so an interrupted run's file is complete up to its last frame.
    """

    name = "stats"

    def __init__(self, path: Path, with_file: bool = False):
        super().__init__()
        self.path = Path(path)
        self.with_file = with_file
        try:
            self._handle = open(self.path, "x", encoding="utf-8")
        except OSError as exc:
            raise DronsegError(f"cannot create {self.path}: {exc.strerror or exc}; choose another --out") from None

    def _write(self, result: Result) -> None:
        line = {"frame": result.index, "timestamp": None if result.timestamp is None else round(result.timestamp, 6),
                "name": result.name}
        if self.with_file:
            line["file"] = result.source
        line["shares"] = result.shares_by_name()
        self._handle.write(json.dumps(line) + "\n")
        self._handle.flush()

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()

    def outputs(self) -> dict[str, str]:
        return {"stats": str(self.path)}


class SinkWorker:
    """Runs one sink in a thread behind a bounded queue; the sink's errors re-raise in ``put``/``close``."""

    def __init__(self, sink: Sink, queue_size: int = 8):
        self.sink = sink
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, queue_size))
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"dronseg-{sink.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is None:
                try:
                    self.sink.write(item)
                except BaseException as exc:  # kept for the main thread; later items are discarded
                    self._error = exc

    def put(self, result: Result) -> None:
        """Queue ``result`` for the sink; raises the sink's error instead once it has failed."""
        if not put_unless_stopped(self._queue, result, self._failed):
            self._raise_error()

    def _failed(self) -> bool:
        return self._error is not None

    def _raise_error(self) -> None:
        if self._error is not None:
            error = self._error
            if isinstance(error, OSError):
                raise DronsegError(f"writing {self.sink.name} failed: {error.strerror or error}; "
                                   "free some space or choose another --out") from None
            raise error

    def close(self) -> None:
        """Write everything queued, finalise the sink, then re-raise a write error if there was one."""
        self._queue.put(None)
        self._thread.join()
        self.sink.close()
        self._raise_error()
