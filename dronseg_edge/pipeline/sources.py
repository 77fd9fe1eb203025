"""Frame sources read through a capture: a video file, a camera, an RTSP/HTTP stream (GStreamer
pipelines build on :class:`CaptureSource` in ``gstreamer``). Images live in ``image_sources``, the
base classes in ``source_base``, all importable from here; ``open_source`` picks the kind.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable, Iterator

import cv2

from dronseg_edge.errors import DronsegError, RuntimeFailure
from dronseg_edge.media import DEFAULT_MAX_PIXELS, native_name
from dronseg_edge.pipeline.capture_options import CaptureOptions, hw_decode_record, open_ffmpeg
from dronseg_edge.pipeline.image_sources import ImageSource
from dronseg_edge.pipeline.pyav_capture import PyAVCapture
from dronseg_edge.pipeline.source_base import (SOURCE_HELP, FrameRecord, FramesSource, Source, quiet_native_stderr,
                                               shown_url)

__all__ = ["FrameRecord", "Source", "FramesSource", "ImageSource", "VideoSource", "CaptureSource", "CameraSource",
           "StreamSource", "quiet_native_stderr", "SOURCE_HELP"]

log = logging.getLogger(__name__)

STREAM_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp", "srt", "file")
# Streams whose server may simply close them at their end (a finite HTTP or TCP stream, a file):
# a clean close of one of these is an end, not a loss (see CaptureSource). RTSP, RTMP, UDP and SRT
# carry cameras: a stop there is always a loss.
ENDING_SCHEMES = ("http", "https", "tcp", "file")
# FFmpeg reads srt:// only when built with libsrt, and pip's OpenCV (5.1.0.95 checked) is not; nothing in OpenCV says so.
SRT_HINT = ("; or this OpenCV's FFmpeg may lack srt:// (pip's opencv-python 5.1 has no libsrt): read it through a "
            "GStreamer pipeline (srtsrc uri=srt://...) with JetPack's or a GStreamer-enabled OpenCV, or relay it as RTSP "
            "(e.g. mediamtx)")
# A decoder error mid-file makes read() fail for the damaged frames only; past this many failures
# in a row the file is taken to have ended.
MAX_CONSECUTIVE_FAILURES = 30
OPEN_TIMEOUT_MS = 10_000
READ_TIMEOUT_MS = 5_000
# A read this close to the read timeout counts as one that timed out (the decoder then still
# returns the few frames it held, so the failure itself comes fast: look back over recent reads).
TIMEOUT_SHARE = 0.8
RECENT_READS = 32
# Frame rates taken as the source's own: a time-lapse at one frame a quarter hour up to a 1000 fps
# camera. Outside it (0, NaN, OpenCV's 90000 for a missing rate) the rate is unknown.
MIN_FPS, MAX_FPS = 1e-3, 1000.0
# A video's time that runs on more than this from one frame to the next is a break in its timeline, not a
# gap: recordings joined (a TS whose clock goes back a minute or more reads 26.5 h on, a 33-bit wrap to FFmpeg).
MAX_TIME_JUMP_S = 3600.0


def _rate_and_count(capture) -> tuple[float | None, int | None]:
    """The capture's frame rate where it is the source's own, and the frame count FFmpeg knows (a file, an HTTP
    file); None for what it does not know (live streams report 0 or garbage: NaN fails both comparisons)."""
    fps, count = capture.get(cv2.CAP_PROP_FPS), capture.get(cv2.CAP_PROP_FRAME_COUNT)
    return (float(fps) if MIN_FPS <= fps <= MAX_FPS else None), (int(count) if 0 < count < 1e9 else None)


def _stores_frame_count(path: Path) -> bool:
    """Whether FFmpeg reads ``path``'s frame count from an index rather than estimating it: an AVI, or an
    MP4/MOV with one index of every sample (a moov and an mdat, no moof) whose edit list shows them all.
    Elsewhere (MKV, WebM, MPEG-TS, fragmented MP4) OpenCV estimates it from the container's duration, which an
    audio track that outlasts the video lengthens; a clip cut without re-encoding (``ffmpeg -ss T -i IN -c
    copy OUT``, phone editors) keeps the frames before its cut in the index, which FFmpeg decodes but never
    returns. Reads that fail past the last frame are then the end of the file, not damage or truncation."""
    seen, offset = set(), 0
    with open(path, "rb") as file:
        head = file.read(12)
        if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
            return True
        for _ in range(64):  # top-level boxes: ftyp, free, moov, mdat... in a few reads
            file.seek(offset)
            head = file.read(16)
            size = int.from_bytes(head[:4], "big") if len(head) >= 8 else 0
            size = int.from_bytes(head[8:16], "big") if size == 1 else size
            kind = head[4:8].decode("latin-1")
            if kind == "moof" or (offset == 0 and kind != "ftyp"):
                return False
            if kind == "moov" and 16 <= size <= 1 << 28:  # its body: what the 16 bytes read hold of it, and the rest
                body = (b"" if _uint(head, 0, 4) == 1 else head[8:]) + file.read(size - 16)
                if _edit_list_cuts_video(body):
                    return False
            seen.add(kind)
            if {"moov", "mdat"} <= seen:
                return True
            if size < 8:  # 0: the box runs to the end of the file
                return False
            offset += size
    return False


def _boxes(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(kind, body) of each MP4 box in ``data``."""
    offset = 0
    while offset + 8 <= len(data):
        size, head = _uint(data, offset, 4), 8
        if size == 1:
            size, head = _uint(data, offset + 8, 8), 16
        size = size or len(data) - offset
        if size < head:
            return
        yield data[offset + 4:offset + 8], data[offset + head:offset + size]
        offset += size


def _uint(data: bytes, at: int, width: int) -> int:
    return int.from_bytes(data[at:at + width], "big")


def _scale_and_duration(header: bytes) -> tuple[int, int]:
    """An mvhd or mdhd box's (time scale, duration)."""
    wide = header[:1] == b"\1"  # version 1: 64-bit times
    return (_uint(header, 20, 4), _uint(header, 24, 8)) if wide else (_uint(header, 12, 4), _uint(header, 16, 4))


def _edit_list_cuts_video(moov: bytes) -> bool:
    """Whether the picture track in an MP4's ``moov`` box shows less than it holds: its header's duration
    (what its edit list shows, in the movie's time scale) is shorter than its media's (mdhd)."""
    movie_scale = _scale_and_duration(dict(_boxes(moov)).get(b"mvhd", b""))[0]
    for kind, trak in _boxes(moov):
        parts = dict(_boxes(trak))
        tkhd = parts.get(b"tkhd", b"")
        if kind != b"trak" or len(tkhd) < 84 or not _uint(tkhd, len(tkhd) - 8, 4) or not movie_scale:
            continue  # not a picture track (no width)
        shown = (_uint(tkhd, 28, 8) if tkhd[:1] == b"\1" else _uint(tkhd, 20, 4)) / movie_scale
        scale, duration = _scale_and_duration(dict(_boxes(parts.get(b"mdia", b""))).get(b"mdhd", b""))
        return bool(scale) and shown < duration / scale - 0.002  # 2 ms: the headers' rounding
    return False


class VideoSource(Source):
    """A video file decoded with OpenCV's FFmpeg backend; damaged frames are skipped and counted.

    Frames come upright: a display rotation in the file (phones, some drones) is applied, as
    players do. OpenCV rather than PyAV: both wrap the same libavcodec and decode at the same speed
    here (benchmarks/README.md#decoding), and OpenCV applies the rotation itself; MPEG-TS files go
    through PyAV where it is installed (:mod:`~dronseg_edge.pipeline.pyav_capture`). A change of
    frame size mid-way is followed, warned about and counted in ``size_changes``.
    """

    kind = "video"

    def __init__(self, path: Path, capture: CaptureOptions | None = None, max_pixels: int = DEFAULT_MAX_PIXELS):
        super().__init__(str(path))
        self.path, self.max_pixels = Path(path), max_pixels
        options = capture or CaptureOptions()
        if self.path.stat().st_size == 0:
            raise DronsegError(f"video {self.path} is empty (0 bytes) and has no frames: {SOURCE_HELP}")
        with quiet_native_stderr():
            suited = None if options.hw_decode else PyAVCapture.open_if_suited(native_name(self.path))
            self.capture = suited or open_ffmpeg(native_name(self.path), options)
        if not self.capture.isOpened():
            raise DronsegError(f"video {self.path} cannot be opened: it has no video stream, is damaged, or uses a "
                               f"codec this FFmpeg lacks (check it with `ffprobe {self.path}`)")
        self.hw_decode = hw_decode_record(options, self.capture)
        self.capture.set(cv2.CAP_PROP_ORIENTATION_AUTO, 1)  # the default in OpenCV's FFmpeg backend; said, not assumed
        self.fps, self.frame_count = _rate_and_count(self.capture)
        self._exact_count = self.frame_count is not None and _stores_frame_count(self.path)
        self.size = (int(self.capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self.capture.get(cv2.CAP_PROP_FRAME_HEIGHT)))
        if self.frame_count is None and self.size[0] <= 0:
            raise DronsegError(f"video {self.path} has no frames: check it plays, e.g. with `ffprobe {self.path}`")
        self.check_pixels(self.size)

    def frames(self, stride: int = 1) -> Iterator[FrameRecord]:
        position, failures, yielded, last_time, shift, rate, read = 0, 0, 0, -1.0, 0.0, self.fps or 30.0, -1
        spent = 0.0  # ms decoding since the last frame yielded: --stride's skipped frames are decoded too
        while not self._stop.is_set():
            wanted = position % stride == 0
            start = time.perf_counter()
            ok, frame = self.capture.read() if wanted else (self.capture.grab(), None)
            spent += (time.perf_counter() - start) * 1e3
            if not ok:
                failures += 1
                position += 1
                if failures > MAX_CONSECUTIVE_FAILURES:
                    break
                continue
            self._count_corrupt(failures, position - failures)
            failures = 0
            # The frame's presentation time from the container, relative to the stream's start (every frame's: the
            # last one's is where the video ends); a file without timestamps reads 0 for every frame, so a time that
            # fails to advance or jumps (MAX_TIME_JUMP_S) goes on at the nominal rate, and the times after it from there.
            raw = self.capture.get(cv2.CAP_PROP_POS_MSEC) / 1e3
            seconds = raw + shift
            if not last_time < seconds <= last_time + MAX_TIME_JUMP_S:  # NaN and inf fail it too
                seconds = max(position / rate, last_time + 1 / rate)
                shift = seconds - raw if math.isfinite(raw) else shift
            last_time = seconds
            if wanted:
                size = (frame.shape[1], frame.shape[0])
                if size != self.size:
                    self.check_pixels(size, f" from frame {position} on")
                if size != self.size and self.size[0] > 0:  # not the first frame of a file whose header gave no size
                    self.size_changes += 1
                    # "by": frames skipped since the last read (--stride, damaged ones) were not looked at
                    log.warning("video %s changes size %s frame %d, from %dx%d to %dx%d: the outputs follow it (the "
                                "overlay video starts a new file)", self.path, "at" if position == read + 1 else "by",
                                position, *self.size, *size)
                self.size, read = size, position
                yielded += 1
                decode_ms, spent = spent, 0.0
                yield FrameRecord(position, seconds, frame, self.name, f"{position:06d}", decode_ms)
            position += 1
        if self._stop.is_set():
            return
        if yielded == 0:
            raise DronsegError(f"video {self.path} has no readable frames: check it plays, e.g. with `ffprobe {self.path}`")
        last_good = self.length = position - failures
        self.end_time = last_time
        if failures > MAX_CONSECUTIVE_FAILURES and self._exact_count and position <= self.frame_count:
            # More frames failed in a row than damage explains, all before the frame count the header
            # declares: the file stops early (cut short, or still being written). Missing, not damaged.
            self.end = "truncated"
            log.warning("video %s ends at frame %d of the %d its header declares: the file is truncated (cut short "
                        "or still being written); the run covers the frames before", self.path, last_good,
                        self.frame_count)
            return
        # Failures before the container's frame count are damaged frames; past it, the end of the file.
        if failures and self._exact_count:
            self._count_corrupt(min(failures, max(self.frame_count - last_good, 0)), last_good)
        self.end = "ended"

    def _count_corrupt(self, count: int, position: int) -> None:
        if count > 0:
            self.corrupt += count
            log.warning("video %s: skipped %d damaged frame(s) from frame %d on", self.path, count, position)


class CaptureSource(Source):
    """A live capture (camera or network stream); when it stops it is reopened with back-off.

    A stop is read from what OpenCV's FFmpeg reader shows, whether a read failed and how long it
    took, by the rule in docs/reliability.md#streams-that-end-or-are-lost: a timed-out read, or any
    stop of a camera or an RTSP, RTMP, UDP or SRT stream, is a *loss* (reopened for up to
    ``reconnect_s``, then a RuntimeFailure, exit code 5, ``end = "lost"``); a clean close of a
    stream that may end (``ends``) is its *end* (``end = "ended"``, no error), at once where it
    declared its length (reopening would replay it), else when it does not come back within ``reconnect_s``.

    ``open_capture``: a callable returning an opened capture or None; ``cannot_open``: the error
    when the first open fails.
    """

    live_default = True
    ends = False  # whether a clean close may be the stream's end (ENDING_SCHEMES)
    is_file = False  # a file read as a capture (a GStreamer filesrc pipeline): its clean close is its end

    def __init__(self, name: str, open_capture: Callable[[], object | None], reconnect_s: float, cannot_open: str,
                 read_timeout_s: float | None = None):
        super().__init__(name)
        self.reconnect_s = float(reconnect_s)
        self.read_timeout_s = read_timeout_s  # the capture's own read timeout, None for none (cameras)
        self._open_capture = open_capture
        with quiet_native_stderr():
            self.capture = open_capture()
        if self.capture is None:
            # Exit code 5, not 2: at boot a camera or its network often comes up after this program,
            # and a supervisor should retry rather than wait for a fixed configuration.
            raise RuntimeFailure(cannot_open)
        self.fps, self.frame_count = _rate_and_count(self.capture)

    def frames(self, stride: int = 1) -> Iterator[FrameRecord]:
        start_time, position, spent = time.monotonic(), 0, 0.0  # spent: ms reading since the last frame yielded
        seen = None  # the last frame's time, segmented or not: where a stream that ends ends (Source.end_time)
        recent: collections.deque[float] = collections.deque(maxlen=RECENT_READS)  # seconds per read
        while not self._stop.is_set():
            start = time.perf_counter()
            ok, frame = self.capture.read()
            recent.append(time.perf_counter() - start)
            if ok and frame is not None:
                size = (frame.shape[1], frame.shape[0])
                self.check_pixels(size)
                if self.size not in (None, size):  # reopened at another resolution (a camera rebooted in another mode)
                    self.size_changes += 1
                    log.warning("%s %s changes size at frame %d, from %dx%d to %dx%d: the outputs follow it", self.kind,
                                self.name, position, *self.size, *size)
                self.size = size
                spent += recent[-1] * 1e3  # --stride's skipped frames are read (decoded) too
                seen = time.monotonic() - start_time
                if position % stride == 0:
                    yield FrameRecord(position, seen, frame, self.name, f"{position:06d}", spent, fps=self.fps)
                    spent = 0.0
                position += 1
                continue
            if self._stop.is_set():  # a read a stop outlasted: its capture may be left behind (FrameReader.stop)
                return
            timed_out = self.read_timeout_s is not None and max(recent) >= TIMEOUT_SHARE * self.read_timeout_s
            recent.clear()
            replays = self.ends and (self.frame_count or self.is_file)  # a reopen starts it again at its first frame
            declared = not timed_out and replays
            if not declared and (self._reconnect(timed_out, position) or self._stop.is_set()):
                skip = position if replays else 0  # a file that timed out goes on where it stopped: not replayed
                while skip > 0 and not self._stop.is_set() and self.capture.grab():
                    skip -= 1
                continue
            if not timed_out and self.ends:  # its length too: --stride's overlay video runs to its last frame
                self.end, self.length, self.end_time = "ended", position, seen
                note = (f"the end of {f'the {self.frame_count} frames it declared' if self.frame_count else 'its file'}"
                        "; not reopened, which would replay it" if declared else
                        f"its server closed it and it did not come back within {self.reconnect_s:g} s")
                log.warning("%s %s ended after %d frames (%s)", self.kind, self.name, position, note)
                return
            self.end = "lost"
            why = ("no frame within the read timeout" if timed_out else
                   "the device stopped delivering frames" if self.kind == "camera" else "the connection closed")
            raise RuntimeFailure(
                f"{self.kind} {self.name} was lost ({why}) and could not be reopened within {self.reconnect_s:g} s: "
                "check the device or network, or allow longer with --reconnect-s", stopped="source_lost")

    def _reconnect(self, timed_out: bool, position: int) -> bool:
        """Reopen with back-off for up to ``reconnect_s``; True once reopened, False when it gave up or was stopped."""
        self.capture.release()
        how = "timed out" if timed_out else "stopped"
        log.warning("%s %s %s; reopening for up to %g s", self.kind, self.name, how, self.reconnect_s)
        began, delay = time.monotonic(), 0.25
        while (remaining := self.reconnect_s - (time.monotonic() - began)) > 0:
            if self._stop.wait(min(delay, remaining)):
                return False
            delay = min(delay * 2, 5.0)
            if (capture := self._open_capture()) is not None:
                self.capture = capture
                self.reconnects += 1
                log.warning("%s %s reopened after %.1f s", self.kind, self.name, time.monotonic() - began)
                fps = _rate_and_count(capture)[0]
                if fps != self.fps and None not in (fps, self.fps):  # without a rate, frames are placed as they come
                    self.rate_changes += 1
                    log.warning("%s %s changes rate at frame %d, from %g to %g fps: the outputs follow it", self.kind,
                                self.name, position, self.fps, fps)
                    self.fps = fps
                return True
        return False


CAMERA_DEVICE = "/dev/video{}"  # V4L2's node for camera N


class CameraSource(CaptureSource):
    kind = "camera"

    def __init__(self, index: int, reconnect_s: float = 30.0, open_capture=None):
        self.index = int(index)
        try:
            super().__init__(str(index), open_capture or (lambda: opened(cv2.VideoCapture(self.index))), reconnect_s,
                             f"camera {self.index} cannot be opened (no such device, or busy): list cameras with "
                             "`ls /dev/video*` or `v4l2-ctl --list-devices` and pass its index")
        except RuntimeFailure:  # a device this user may not open: the user's to fix (2, as any unreadable input), not 5
            device = CAMERA_DEVICE.format(self.index)
            if os.path.exists(device) and not os.access(device, os.R_OK | os.W_OK):
                raise DronsegError(f"camera {self.index} cannot be opened: {device}: Permission denied: add this user "
                                   f"to its group (`ls -l {device}`; usually `sudo usermod -aG video $USER`, then log "
                                   "in again)") from None
            raise


class StreamSource(CaptureSource):
    """A URL opened through OpenCV's FFmpeg backend (``capture``: RTSP transport and latency, hardware decoding)."""

    kind = "stream"

    def __init__(self, url: str, reconnect_s: float = 30.0, open_capture=None, capture: CaptureOptions | None = None,
                 name: str | None = None):
        """``name``: the URL as the user wrote it, where FFmpeg is given another spelling (``url``); shown with its
        password masked."""
        name = shown_url(name or url)
        scheme = name.split("://", 1)[0].lower()
        self.ends = scheme in ENDING_SCHEMES
        self.capture_options = capture or CaptureOptions()
        opener = open_capture or (lambda: opened(open_ffmpeg(url, self.capture_options, [
            cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS])))

        def open_and_record():
            capture = opener()
            if capture is not None:  # each reopen may land on another decoder
                self.hw_decode = hw_decode_record(self.capture_options, capture)
            return capture

        super().__init__(name, open_and_record, reconnect_s, read_timeout_s=READ_TIMEOUT_MS / 1e3,
                         cannot_open=f"stream {name} cannot be opened within {OPEN_TIMEOUT_MS // 1000} s: check the "
                                     "URL, credentials and network (try it with `ffplay URL`)" + SRT_HINT * (scheme == "srt"))
        if self.frame_count is None and self.capture.get(cv2.CAP_PROP_FOURCC) == cv2.VideoWriter.fourcc(*"MJPG"):
            self.fps = None  # live MJPEG (an HTTP camera's multipart stream) carries no rate: FFmpeg's 25 is its guess


def opened(capture):
    """``capture`` if it opened, else None (released)."""
    if capture.isOpened():
        return capture
    capture.release()
    return None
