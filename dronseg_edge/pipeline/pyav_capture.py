"""MPEG-TS files through PyAV, whose frames keep their own size when the stream's size changes.

OpenCV's FFmpeg reader scales every frame to the size the stream had when it opened, and nothing in
its API shows a change: an MPEG-TS whose resolution changes mid-way (a recorded feed whose camera
switched modes, a broadcast) comes out squashed. Used for MPEG-TS files only (the container where
such changes are legal; an MP4 track has one size, and OpenCV applies its display rotation), where
PyAV is installed (the ``video`` extra) and ``--hw-decode`` is not asked for; network streams stay
with OpenCV, whose reader their reconnect logic is built on. :class:`PyAVCapture` reads like the
part of ``cv2.VideoCapture`` that ``VideoSource`` uses, so both share its handling of damaged
frames, truncation and timestamps.
"""

from __future__ import annotations

import collections
from pathlib import Path

import cv2
import numpy as np

PYAV_FORMATS = ("mpegts",)  # FFmpeg demuxer names whose files PyAV decodes here
TS_PACKETS = (188, 192, 204)  # MPEG-TS packet sizes FFmpeg's demuxer takes (192: M2TS, 204: with FEC)


class PyAVCapture:
    """A video file's first video stream decoded by PyAV, read like ``cv2.VideoCapture``: frames
    are (H, W, 3) uint8 BGR at their own size. Damaged packets make ``read`` fail for that frame."""

    def __init__(self, container, ffmpeg_error: type[Exception]):
        self._container, self._error = container, ffmpeg_error
        self._stream = container.streams.video[0]
        self._stream.thread_type = "AUTO"  # frame threads, as OpenCV's reader uses
        self._packets = container.demux(self._stream)
        self._decoded: collections.deque = collections.deque()
        self._frame = None
        start, base = self._stream.start_time, self._stream.time_base
        self._start_s = float(start * base) if start is not None and base is not None else 0.0

    @classmethod
    def open_if_suited(cls, path: Path | str) -> "PyAVCapture | None":
        """A PyAVCapture for ``path`` if PyAV is installed and the file is one it decodes here (MPEG-TS
        with a video stream); None otherwise (OpenCV reads it, and reports its own errors). A file without
        MPEG-TS sync bytes is passed over unopened: PyAV's import costs ~24 MiB and 50 ms on every run."""
        if not _has_ts_sync(path):
            return None
        try:
            import av
        except ImportError:
            return None
        try:
            container = av.open(str(path))
        except (av.FFmpegError, OSError, ValueError):
            return None
        if container.format.name not in PYAV_FORMATS or not container.streams.video:
            container.close()
            return None
        return cls(container, av.FFmpegError)

    def isOpened(self) -> bool:  # noqa: N802  (cv2.VideoCapture's name)
        return self._container is not None

    def grab(self) -> bool:
        """Decode the next frame; False at the end (or where the demuxer cannot read on: a cut or
        unreadable file) and for a packet that would not decode."""
        while not self._decoded:
            try:
                packet = next(self._packets)
            except (StopIteration, self._error):
                self._packets = iter(())
                return False
            try:
                self._decoded.extend(packet.decode())  # the last, empty packet flushes the decoder
            except self._error:
                return False
        self._frame = self._decoded.popleft()
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        return (True, self._frame.to_ndarray(format="bgr24")) if self.grab() else (False, None)

    def get(self, prop: int) -> float:
        """What ``cv2.VideoCapture.get`` gives for the properties VideoSource asks; 0 for others."""
        stream, frame = self._stream, self._frame
        if prop == cv2.CAP_PROP_FPS:
            return float(stream.average_rate or stream.guessed_rate or 0)
        if prop == cv2.CAP_PROP_FRAME_COUNT:
            return float(stream.frames or 0)
        if prop in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT):
            source = frame if frame is not None else stream.codec_context
            return float(source.width if prop == cv2.CAP_PROP_FRAME_WIDTH else source.height)
        if prop == cv2.CAP_PROP_POS_MSEC and frame is not None and frame.time is not None:
            return (frame.time - self._start_s) * 1e3
        return 0.0

    def set(self, prop: int, value: float) -> bool:
        return False

    def release(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None


def _has_ts_sync(path: Path | str) -> bool:
    """Whether ``path`` may be MPEG-TS: its sync byte 0x47 three packets in a row, starting within the
    first packet, for a packet size FFmpeg's demuxer takes. FFmpeg's own probe decides the rest."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4 * max(TS_PACKETS))
    except OSError:
        return False
    return any(all(head[start + k * size:start + k * size + 1] == b"\x47" for k in range(3))
               for size in TS_PACKETS for start in range(size))
