"""Encoding and sending one live stream: H.264 for a receiver that is watching now.

Settings for live use, whatever the encoder: no B-frames (a frame leaves as soon as it is encoded),
a keyframe every second (a receiver that joins late, or lost packets, waits at most that long), the
parameter sets (SPS/PPS) before every keyframe (players that join mid-stream and QGroundControl need
them in the stream), a bitrate cap for the radio link (``--stream-bitrate-kbps``), and x264's zero-latency
tuning (no lookahead, no frame threads). Timestamps follow the wall clock, so a receiver plays frames
at the pace they were segmented, with gaps where frames were dropped.

:class:`PyAVLiveEncoder` muxes with PyAV's FFmpeg (``mpegts`` to udp://, ``rtp`` to rtp://, ``rtsp``
to rtsp://) through :class:`~dronseg_edge.pipeline.video_writer.PyAVOutput`; it needs no ffmpeg
program. :class:`GStreamerLiveEncoder` is the counterpart for a Jetson's hardware encoder, through
OpenCV's GStreamer VideoWriter (:func:`stream_pipeline`), for udp:// and rtp://. RTSP publishing stays
with PyAV: OpenCV's GStreamer writer reports no error from its sink, so a server that went away would
go unnoticed and never be reconnected; over UDP nothing is lost by that, as UDP reports nothing either.
Both raise OSError when the network or the server refuses, which the stream sink answers by
reconnecting.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from dronseg_edge.errors import DronsegError
from dronseg_edge.gst_encoders import encoder_chain, open_gst_writer
from dronseg_edge.pipeline.live_targets import RTP_PAYLOAD_TYPE, StreamTarget
from dronseg_edge.pipeline.video_writer import INSTALL_H264, PyAVOutput, _import_av, encoder_opens

KEYFRAME_S = 1.0
LIVE_X264 = {"preset": "veryfast", "tune": "zerolatency", "bf": "0"}
FORMATS = {"udp": "mpegts", "rtp": "rtp", "rtsp": "rtsp"}
# UDP payloads that fit a 1500-byte MTU: 7 MPEG-TS packets (1316 bytes), or an RTP packet of 1200.
URL_OPTIONS = {"udp": "?pkt_size=1316", "rtp": "?pkt_size=1200", "rtsp": ""}
# live_targets allows no spaces or quotes in a host, so it can stand in the pipeline's text as it is
UDP_SINK = "udpsink host={host} port={port} sync=false async=false"


class LiveEncoder:
    """An open live stream of BGR frames of one (W, H) ``size``. ``send(frame)`` encodes and sends one
    (H, W, 3) uint8 BGR frame and returns True when its packets have left (OSError when the receiver
    or server refuses); ``close()`` ends the stream (idempotent; a gone connection's errors swallowed)."""

    encoder = "?"  # what encodes it, for summary.json


def check_pyav_streams() -> None:
    """Raise DronsegError when PyAV or its libx264 is missing (before the run starts)."""
    if _import_av() is None:
        raise DronsegError(f"--stream-out needs PyAV, which is not installed: {INSTALL_H264}")
    if not encoder_opens("libx264"):
        raise DronsegError("--stream-out needs libx264, which this PyAV's FFmpeg lacks: "
                           "pip install --force-reinstall av (PyPI's wheels carry libx264)")


class PyAVLiveEncoder(PyAVOutput, LiveEncoder):
    """libx264 through PyAV's FFmpeg to a udp://, rtp:// or rtsp:// target (RTSP over TCP)."""

    encoder = "libx264"

    def __init__(self, target: StreamTarget, size: tuple[int, int], fps: float, bitrate_kbps: int):
        bits = int(bitrate_kbps) * 1000
        options = {**LIVE_X264, "g": str(max(1, round(fps * KEYFRAME_S))), "maxrate": str(bits), "bufsize": str(bits)}
        try:  # connects (RTSP: ANNOUNCE, SETUP, RECORD): a refusal raises here
            PyAVOutput.__init__(self, target.url + URL_OPTIONS[target.kind], FORMATS[target.kind], "libx264", size,
                                fps, options, {"rtsp_transport": "tcp"} if target.kind == "rtsp" else {}, bit_rate=bits)
        except _import_av().FFmpegError as exc:
            raise _network_error(exc) from None
        self._started: float | None = None
        self._last_pts = -1
        self._keyframe_at = -KEYFRAME_S  # when the last keyframe left (monotonic s)

    def send(self, frame_bgr: np.ndarray) -> bool:
        now = time.monotonic()
        self._started = now if self._started is None else self._started
        # Wall-clock timestamps in frame periods, always increasing: a receiver keeps the real pace.
        self._last_pts = max(self._last_pts + 1, round((now - self._started) * self.rate))
        # x264's keyframe interval counts frames; frames that come slower than the rate (a --live model
        # slower than its camera) would space keyframes further than KEYFRAME_S: the clock forces one then.
        try:
            packets = self._encode(frame_bgr, self._last_pts, key=now - self._keyframe_at >= KEYFRAME_S)
        except _import_av().FFmpegError as exc:
            raise _network_error(exc) from None
        if any(packet.is_keyframe for packet in packets):
            self._keyframe_at = now
        return bool(packets)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # the connection is gone (nothing to flush to; an RTSP TEARDOWN unanswered)
            super().close()


def _network_error(exc: Exception) -> OSError:
    """PyAV's error as an OSError (its network errors are OSErrors already; a server that answers with
    something else, an RTSP server refusing the publish, is InvalidDataError): the sink reconnects."""
    return exc if isinstance(exc, OSError) else OSError(exc.errno, exc.strerror or str(exc))


def stream_pipeline(target: StreamTarget, encoder: str, fps: float, bitrate_kbps: int) -> str:
    """The pipeline that sends OpenCV's frames to a udp:// (MPEG-TS) or rtp:// ``target`` (rtsp:// goes through PyAV)."""
    chain = encoder_chain(encoder, round(fps * KEYFRAME_S), bitrate_kbps, live=True)
    mux = ("mpegtsmux alignment=7" if target.kind == "udp" else
           f"rtph264pay config-interval=-1 pt={RTP_PAYLOAD_TYPE} mtu=1200")
    return f"appsrc is-live=true ! {chain} ! {mux} ! {UDP_SINK.format(host=target.host, port=target.port)}"


class GStreamerLiveEncoder(LiveEncoder):
    """A udp:// or rtp:// stream encoded by a GStreamer encoder; ``send`` is True once GStreamer has the frame."""

    def __init__(self, target: StreamTarget, size: tuple[int, int], fps: float, bitrate_kbps: int, encoder: str):
        self.encoder = encoder
        self.pipeline = stream_pipeline(target, encoder, fps, bitrate_kbps)
        self._writer = open_gst_writer(self.pipeline, size, fps)

    def send(self, frame_bgr: np.ndarray) -> bool:
        self._writer.write(np.ascontiguousarray(frame_bgr))
        return True

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
