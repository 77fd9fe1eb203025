"""Encoding and sending one live stream: H.264 for a receiver that is watching now.

Settings for live use, whatever the encoder: no B-frames (a frame leaves as soon as it is encoded),
a keyframe every second (a receiver that joins late, or lost packets, waits at most that long), the
parameter sets (SPS/PPS) before every keyframe (players that join mid-stream and QGroundControl need
them in the stream), a bitrate cap for the radio link (``--stream-bitrate``), and x264's zero-latency
tuning (no lookahead, no frame threads). Timestamps follow the wall clock, so a receiver plays frames
at the pace they were segmented, with gaps where frames were dropped.

:class:`PyAVLiveEncoder` muxes with PyAV's FFmpeg (``mpegts`` to udp://, ``rtp`` to rtp://, ``rtsp``
to rtsp://); it needs no ffmpeg program. ``pipeline/gst_writer.py`` has the GStreamer counterpart for a
Jetson's hardware encoder. Both raise OSError when the network or the server refuses, which the
stream sink answers by reconnecting.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from fractions import Fraction

import numpy as np

from dronseg_edge.errors import DronsegError
from dronseg_edge.pipeline.live_targets import StreamTarget
from dronseg_edge.pipeline.video_writer import INSTALL_H264, _import_av, encoder_opens

KEYFRAME_S = 1.0
LIVE_X264 = {"preset": "veryfast", "tune": "zerolatency", "bf": "0"}
FORMATS = {"udp": "mpegts", "rtp": "rtp", "rtsp": "rtsp"}
# UDP payloads that fit a 1500-byte MTU: 7 MPEG-TS packets (1316 bytes), or an RTP packet of 1200.
URL_OPTIONS = {"udp": "?pkt_size=1316", "rtp": "?pkt_size=1200", "rtsp": ""}


class LiveEncoder(ABC):
    """An open live stream of BGR frames of one (W, H) ``size``: ``send`` each, then ``close``."""

    encoder = "?"  # what encodes it, for summary.json

    def __init__(self, target: StreamTarget, size: tuple[int, int], fps: float, bitrate_kbps: int):
        self.target, self.size, self.fps, self.bitrate_kbps = target, size, fps, bitrate_kbps

    @abstractmethod
    def send(self, frame_bgr: np.ndarray) -> bool:
        """Encode and send one (H, W, 3) uint8 BGR frame of ``size``; True when its packets have left
        (handed to the network). Raises OSError when the receiver or server refuses."""

    @abstractmethod
    def close(self) -> None:
        """End the stream (idempotent); errors of a connection already gone are swallowed."""


def check_pyav_streams() -> None:
    """Raise DronsegError when PyAV or its libx264 is missing (before the run starts)."""
    if _import_av() is None:
        raise DronsegError(f"--stream-out needs PyAV, which is not installed: {INSTALL_H264}")
    if not encoder_opens("libx264"):
        raise DronsegError("--stream-out needs libx264, which this PyAV's FFmpeg lacks: "
                           "pip install --force-reinstall av (PyPI's wheels carry libx264)")


class PyAVLiveEncoder(LiveEncoder):
    """libx264 through PyAV's FFmpeg to a udp://, rtp:// or rtsp:// target (RTSP over TCP)."""

    encoder = "libx264"

    def __init__(self, target: StreamTarget, size: tuple[int, int], fps: float, bitrate_kbps: int):
        super().__init__(target, size, fps, bitrate_kbps)
        av = _import_av()
        self._frame_from, self._error = av.VideoFrame.from_ndarray, av.FFmpegError
        options = {"rtsp_transport": "tcp"} if target.kind == "rtsp" else {}
        try:
            self._container = av.open(target.url + URL_OPTIONS[target.kind], "w", format=FORMATS[target.kind],
                                      options=options)
        except av.FFmpegError as exc:
            raise _network_error(exc) from None
        try:
            self.rate = Fraction(fps).limit_denominator(1001)
            bits = int(bitrate_kbps) * 1000
            stream = self._container.add_stream("libx264", rate=self.rate, options={
                **LIVE_X264, "g": str(max(1, round(fps * KEYFRAME_S))), "maxrate": str(bits), "bufsize": str(bits)})
            stream.width, stream.height = size
            stream.pix_fmt = "yuv420p"
            stream.bit_rate = bits
            self._container.start_encoding()  # connects (RTSP: ANNOUNCE, SETUP, RECORD): a refusal raises here
        except BaseException as exc:
            self._close_quietly()
            if isinstance(exc, av.FFmpegError):
                raise _network_error(exc) from None
            raise
        self._stream = stream
        self._started: float | None = None
        self._last_pts = -1
        self._closed = False

    def send(self, frame_bgr: np.ndarray) -> bool:
        frame = self._frame_from(np.ascontiguousarray(frame_bgr), format="bgr24")
        now = time.monotonic()
        self._started = now if self._started is None else self._started
        # Wall-clock timestamps in frame periods, always increasing: a receiver keeps the real pace.
        self._last_pts = frame.pts = max(self._last_pts + 1, round((now - self._started) * self.rate))
        sent = False
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
                sent = True
        except self._error as exc:
            raise _network_error(exc) from None
        return sent

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        except Exception:  # the connection is gone: nothing left to flush to
            pass
        self._close_quietly()

    def _close_quietly(self) -> None:
        try:
            self._container.close()
        except Exception:  # an RTSP TEARDOWN to a server that went away
            pass


def _network_error(exc: Exception) -> OSError:
    """PyAV's error as an OSError (its network errors are OSErrors already; a server that answers with
    something else, an RTSP server refusing the publish, is InvalidDataError): the sink reconnects."""
    if isinstance(exc, OSError):
        return exc
    return OSError(getattr(exc, "errno", None), getattr(exc, "strerror", None) or str(exc))


def even_size(size: tuple[int, int]) -> tuple[int, int]:
    """yuv420p needs even sides: ``size`` rounded down to them (at least 2x2)."""
    return max(2, size[0] - size[0] % 2), max(2, size[1] - size[1] % 2)
