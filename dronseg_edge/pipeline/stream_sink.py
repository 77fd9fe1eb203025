"""``--stream-out``: the segmented video, live, to a ground station (one sink per URL).

A stream is a *lossy* sink (:class:`~dronseg_edge.pipeline.sink_worker.SinkWorker`): its queue holds two
frames and drops the oldest when the sender falls behind, so a slow or absent receiver never slows
the segmentation, and the files keep every frame. A refused connection or a server that goes away
(an RTSP server restarted or stopped: the next write fails) closes the stream; it is reopened with
back-off (0.5 s, doubling to 10 s) while the frames meanwhile are dropped. A server that stops reading
without closing holds the sender in its TCP write (neither FFmpeg's RTSP muxer nor PyAV's output
offers a write timeout) until it reads again or the connection breaks: the frames are dropped
meanwhile, the run goes on. Every drop is counted, and the latency from each frame's read to its
packet leaving is kept for summary.json's p50/p99.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Callable

import cv2
import numpy as np

from dronseg_edge.pipeline.live_encoder import LiveEncoder
from dronseg_edge.pipeline.live_targets import StreamTarget
from dronseg_edge.pipeline.overlay import OverlayPlan
from dronseg_edge.pipeline.result import Result
from dronseg_edge.pipeline.sinks import Sink
from dronseg_edge.pipeline.source_base import shown_url
from dronseg_edge.pipeline.video_writer import even_size
from dronseg_edge.sizes import format_size

log = logging.getLogger(__name__)

FIRST_RETRY_S = 0.5
MAX_RETRY_S = 10.0


class LatencySample:
    """Milliseconds per frame, kept as a uniform sample of at most ``size`` values (reservoir
    sampling): percentiles of a whole flight in bounded memory."""

    def __init__(self, size: int = 20_000, seed: int = 0):
        self.size, self.count = size, 0
        self.values: list[float] = []
        self._random = random.Random(seed)

    def add(self, ms: float) -> None:
        self.count += 1
        if len(self.values) < self.size:
            self.values.append(ms)
        else:
            slot = self._random.randrange(self.count)
            if slot < self.size:
                self.values[slot] = ms

    def percentiles(self) -> dict[str, float] | None:
        """{"p50": ms, "p99": ms}, or None before the first value."""
        if not self.values:
            return None
        p50, p99 = np.percentile(np.asarray(self.values), [50, 99])
        return {"p50": round(float(p50), 2), "p99": round(float(p99), 2)}


class StreamSink(Sink):
    """One ``--stream-out`` target: the overlay (``plan``) or the colour mask (``plan`` at opacity 1),
    scaled to ``size`` (W, H; None: the first frame's size, each side even), at ``fps`` nominal frames
    per second and ``bitrate_kbps``. ``open_encoder`` opens the LiveEncoder (PyAV's, or GStreamer's on a
    Jetson); ``sdp``: the SDP file written for an rtp:// target, for summary.json."""

    heavy = False  # no disk: goes on below the free-disk floor
    lossy = True

    def __init__(self, target: StreamTarget, plan: OverlayPlan, what: str, size: tuple[int, int] | None, fps: float,
                 bitrate_kbps: int, open_encoder: Callable[[StreamTarget, tuple[int, int], float, int], LiveEncoder],
                 sdp: str | None = None):
        super().__init__()
        self.name = self.target = target.name
        self.stream = target
        self.plan, self.what, self.fps, self.bitrate_kbps = plan, what, fps, bitrate_kbps
        self.size = None if size is None else even_size(size)
        self.sdp, self._open, self.latency = sdp, open_encoder, LatencySample()
        self._encoder: LiveEncoder | None = None
        self.encoder_name: str | None = None
        self.last_error: str | None = None
        self.reconnects = 0
        self._connected_once = self._down = False  # _down: an outage is going on (its warning given)
        self._retry_at, self._retry_s = 0.0, FIRST_RETRY_S

    def _write(self, result: Result) -> None:
        image = self.plan.image(result)
        if self.size is None:
            self.size = even_size((image.shape[1], image.shape[0]))
        if self._encoder is None and not self._connect():
            self.dropped += 1
            return
        if (image.shape[1], image.shape[0]) != self.size:
            shrink = image.shape[1] > self.size[0]
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        try:
            left = self._encoder.send(image)
        except OSError as exc:
            self.close()
            self._retry_later(exc, "was lost")
            self.dropped += 1
            return
        self._retry_s = FIRST_RETRY_S
        if left and result.read_at is not None:
            self.latency.add((time.monotonic() - result.read_at) * 1e3)

    def _connect(self) -> bool:
        """Open the stream unless a retry is not due yet; False (and the next retry planned) when it fails."""
        now = time.monotonic()
        if now < self._retry_at:
            return False
        try:
            self._encoder = self._open(self.stream, self.size, self.fps, self.bitrate_kbps)
        except OSError as exc:  # refused, unreachable, timed out (PyAV's errors are OSErrors)
            self._retry_later(exc, "cannot be reached")
            return False
        self.encoder_name = self._encoder.encoder
        if self._connected_once:
            self.reconnects += 1
        if self._down:
            log.warning("stream %s: sending", self.name)
        self._connected_once, self._down = True, False
        return True

    def _retry_later(self, exc: OSError, what: str) -> None:
        reason = shown_url(" ".join(str(exc).split()))[:200] or type(exc).__name__
        if not self._down:  # one line per outage, not one per retry
            log.warning("stream %s %s (%s): retrying every %g..%g s; frames for it are dropped meanwhile",
                        self.name, what, reason, FIRST_RETRY_S, MAX_RETRY_S)
        self._down = True
        self.last_error = reason
        self._retry_at = time.monotonic() + self._retry_s
        self._retry_s = min(self._retry_s * 2, MAX_RETRY_S)

    def close(self) -> None:
        encoder, self._encoder = self._encoder, None
        if encoder is not None:
            encoder.close()

    def record(self) -> dict:
        """This stream's entry in summary.json's ``streams``."""
        return {"url": self.name, "protocol": self.stream.kind, "what": self.what,
                "size": format_size(self.size) if self.size else None, "encoder": self.encoder_name,
                "bitrate_kbps": self.bitrate_kbps, "frames_sent": self.frames, "frames_dropped": self.frames_dropped,
                "reconnects": self.reconnects, "latency_ms": self.latency.percentiles(), "sdp": self.sdp,
                "last_error": self.last_error}
