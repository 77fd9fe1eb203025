"""What every frame source is: the :class:`FrameRecord` each yields and the :class:`Source` base
class; :class:`FramesSource` wraps any iterable of arrays (the Python API).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from abc import abstractmethod
from dataclasses import dataclass
from typing import Iterable, Iterator
from urllib.parse import SplitResult, urlsplit

import cv2
import numpy as np

from dronseg_edge.errors import DronsegError
from dronseg_edge.media import DEFAULT_MAX_PIXELS, megapixels, too_large_fix

SOURCE_HELP = ("pass a video file, an image, a folder or glob of images, a camera index (0), an rtsp:// URL, "
               "a GStreamer pipeline (elements joined by '!') or csi://N")


# A camera's ?user=admin&pwd=..., SRT's ?passphrase=...; GStreamer's rtspsrc/souphttpsrc user-pw and srtsrc passphrase.
_SECRET_QUERY = re.compile(r"([?&;](?:password|passwd|pwd|pass|passphrase|token|access_token|auth|key|api_key|apikey"
                           r"|secret)=)[^&#\s'\"]*", re.IGNORECASE)
_SECRET_PROPERTY = re.compile(r"(?<![\w-])((?:user-pw|proxy-pw|passphrase)=)(\"[^\"]*\"|'[^']*'|\S*)")


def shown_url(text: str) -> str:
    """``text`` with the password of each URL in it masked (``rtsp://user:***@cam/1``, as ffmpeg and VLC log one; up to
    the last '@' before the path, as FFmpeg splits it), and so a secret in a query (``?pwd=***``, ``&token=***``) or a
    GStreamer property (``user-pw=***``): how a source is named in logs, errors and outputs, while the URL as given
    is what opens it."""
    text = re.sub(r"(\b[a-z][a-z0-9+.-]*://[^:/?#@\s]*):[^/?#\s]*@", r"\1:***@", text, flags=re.IGNORECASE)
    return _SECRET_PROPERTY.sub(r"\1***", _SECRET_QUERY.sub(r"\1***", text))


def split_url(text: str, what: str, address: bool = False) -> SplitResult:
    """``urlsplit(text)`` (``address``: a HOST:PORT alone, ``--preview``'s); a DronsegError naming ``what``
    (``--stream-out``, ``source``) where it cannot be split (a bracket left open, ``udp://[::1:5600``, was a
    ValueError traceback)."""
    try:
        return urlsplit(f"//{text}" if address else text)
    except ValueError as exc:
        raise DronsegError(f"{what} {shown_url(text)!r}: {exc}: brackets hold an IPv6 address, closed "
                           "(udp://[::1]:5600)") from None


@dataclass
class FrameRecord:
    """One decoded frame and where it came from.

    ``index``: position in the source (0-based, before any stride); ``timestamp``: seconds from the
    start (video: the container's presentation time, so variable-frame-rate files keep their
    timing, or index / fps where it has none, stalls, goes back or jumps an hour or more; camera and
    stream: wall clock since its first read began, not since it opened; images: None);
    ``frame``: (H, W, 3) uint8 BGR; ``name``: stem for output files (``000042`` or the image's stem);
    ``read_at``: ``time.monotonic()`` when the reader took it from the source (None before that), where
    the live outputs' latency starts; ``fps``: a live source's rate at this frame (a reopen may change it), else None.
    """

    index: int
    timestamp: float | None
    frame: np.ndarray
    source: str
    name: str
    decode_ms: float = 0.0
    read_at: float | None = None
    fps: float | None = None


class Source(contextlib.AbstractContextManager):
    """A producer of :class:`FrameRecord`; ``frames()`` may be called once."""

    kind = "source"
    live_default = False  # cameras and streams: process only the newest frame unless told otherwise
    capture = None  # the decoder (cv2.VideoCapture or alike) where there is one, released on close
    max_pixels = DEFAULT_MAX_PIXELS  # --max-pixels: video and stream frames over it are refused (check_pixels)
    size: tuple[int, int] | None = None  # (W, H) a video's or first image's header gives; a live source's last frame's

    def __init__(self, name: str):
        self.name = name
        self.fps: float | None = None
        self.frame_count: int | None = None
        # corrupt: frames or files that could not be decoded and were skipped; oversized: images skipped for
        # holding more pixels than --max-pixels (read from their header); size_changes: times a video's or a live
        # source's frame size changed mid-way (the outputs follow each change); rate_changes: times a live source was
        # reopened at another declared frame rate (the overlay video follows it); reconnects: times it was reopened.
        self.corrupt = self.oversized = self.size_changes = self.rate_changes = self.reconnects = 0
        # How the source ended, once it has: "ended" (its end: last frame, last image, a stream its
        # server closed), "truncated" (a file that stops before the frame count its header declares),
        # "lost" (a stream or camera that stopped and could not be reopened); None while running or
        # when the run stopped it first.
        self.end: str | None = None
        # A video file's or finite stream's frame count once read to its end (a video's or its truncation: ``--stride``
        # leaves frames after the last one segmented, which the overlay video fills in), and its last frame's time; None
        # before, and for other sources.
        self.length: int | None = None
        self.end_time: float | None = None
        # summary.json's hw_decode for sources FFmpeg decodes (video files, URLs): {"requested": bool,
        # "used": "none" | "cuda" | "vaapi" | ...}; None where there is no such choice.
        self.hw_decode: dict | None = None
        self._stop = threading.Event()

    @abstractmethod
    def frames(self, stride: int = 1) -> Iterator[FrameRecord]:
        """Yield every ``stride``-th frame."""

    def check_pixels(self, size: tuple[int, int], where: str = "") -> None:
        """DronsegError for frames over ``max_pixels``, before the pipeline holds a few of them."""
        if (pixels := size[0] * size[1]) > self.max_pixels:
            raise DronsegError(f"{self.kind} {self.name}{where} is {size[0]}x{size[1]} ({megapixels(pixels)}), above the "
                               f"{megapixels(self.max_pixels)} limit (damaged, hostile, or larger than expected): "
                               f"{too_large_fix(pixels, '', self.kind)}")

    def stop(self) -> None:
        """Ask a blocking ``frames()`` (reconnect back-off) to give up soon; safe from any thread."""
        self._stop.set()

    def unread(self) -> "Source":
        """This source; DronsegError once a stream or run has read it (and stopped it) or it was closed."""
        if self._stop.is_set():
            raise DronsegError(f"{self.kind} {self.name} was already read or closed (a source gives its frames "
                               "once): open it again for another stream or run")
        return self

    def close(self) -> None:
        self.stop()
        if self.capture is not None:
            self.capture.release()

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def quiet_native_stderr():
    """Silence OpenCV's and FFmpeg's own stderr lines (e.g. a failed H.264 probe) for a moment.

    They write to file descriptor 2 from C, so only redirecting the descriptor hides them; use it
    in the main thread before worker threads start, or their messages would vanish too.
    """
    with contextlib.ExitStack() as restore:
        if hasattr(cv2, "getLogLevel"):  # OpenCV 4; OpenCV 5 has no log level in its Python API
            restore.callback(cv2.setLogLevel, cv2.getLogLevel())
            cv2.setLogLevel(0)
        with contextlib.suppress(OSError):  # no descriptor 2 (closed by a daemon): nothing to hide
            saved = os.dup(2)
            restore.callback(os.close, saved)
            restore.callback(os.dup2, saved, 2)
            with open(os.devnull, "wb") as devnull:
                os.dup2(devnull.fileno(), 2)
        yield


class FramesSource(Source):
    """Wraps any iterable of (H, W, 3) uint8 BGR arrays (or FrameRecords), e.g. a generator; for the Python API.

    ``copy``: each array is copied as it is taken, for a FrameReader reads frames ahead in its thread and
    a camera SDK may refill one buffer (``cap.read(buf)``); ``predict``, which reads none ahead, passes False."""

    kind = "frames"

    def __init__(self, frames: Iterable, name: str = "frames", fps: float | None = None, copy: bool = True):
        super().__init__(name)
        self._frames = frames
        self.fps, self.copy = fps, copy

    def frames(self, stride: int = 1) -> Iterator[FrameRecord]:
        for position, item in enumerate(self._frames):
            if self._stop.is_set():
                return
            if position % stride:
                continue
            if isinstance(item, FrameRecord):
                yield item
            elif type(item).__module__.startswith("PIL."):  # np.asarray would give its RGB as if BGR
                raise DronsegError(f"frame {position} of {self.name}: a PIL image is RGB and frames are BGR: pass "
                                   "cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)")
            elif item is None or (frame := np.asarray(item)).dtype != np.uint8 or frame.ndim != 3 \
                    or frame.shape[2] != 3 or 0 in frame.shape:
                got = "None (cv2.imread's answer for a file it cannot read)" if item is None else \
                    f"{frame.dtype} {frame.shape}"
                fix = ("float in 0..1: (f * 255).round().astype(np.uint8); 16-bit: (f >> 8).astype(np.uint8)"
                       if item is not None and frame.dtype != np.uint8 else
                       "grey: cv2.cvtColor(f, cv2.COLOR_GRAY2BGR); BGRA: cv2.COLOR_BGRA2BGR")
                raise DronsegError(f"frame {position} of {self.name} is {got}; expected (H, W, 3) uint8 BGR, H and W "
                                   f"at least 1 ({fix})")
            else:
                yield FrameRecord(position, position / self.fps if self.fps else None, frame.copy() if self.copy else frame,
                                  self.name, f"{position:06d}")
        self.end = "ended"

