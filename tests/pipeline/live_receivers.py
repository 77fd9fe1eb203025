"""Receivers of the live outputs on this machine's loopback (127.0.0.1 only), for the stream tests.

PyAV is the receiver everywhere (CI has it, not the ffmpeg program): it opens udp://, an SDP file and,
with ``rtsp_flags=listen``, plays the RTSP server a publisher connects to. ``ffmpeg`` is used where it
is installed. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import threading
import time

import numpy as np

from dronseg_edge.classes import CLASS_NAMES, PALETTE
from dronseg_edge.pictures import bgr_lut
from dronseg_edge.pipeline.overlay import OverlayPlan
from dronseg_edge.pipeline.result import Result

LOOPBACK = "127.0.0.1"
FFMPEG = shutil.which("ffmpeg")
PLAN = OverlayPlan(0.5, bgr_lut(PALETTE))


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    """A port nothing listens on now (UDP or TCP ``kind``); the OS picks it."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def wait_until_bound(port: int, kind: int = socket.SOCK_DGRAM, timeout: float = 30.0) -> None:
    """Wait until a receiver holds ``port`` (a TCP listener, or a bound UDP socket), so nothing sent is missed.

    Read from the kernel's socket tables: a probe that bound the port itself (or connected: an RTSP listener
    takes a connection as its client) made a receiver binding it meanwhile fail (EADDRINUSE), then waited in
    vain. The last look comes after the deadline: a loaded machine may not run this thread until then."""
    deadline = time.monotonic() + timeout
    while True:
        passed = time.monotonic() > deadline
        with open("/proc/net/tcp" if kind == socket.SOCK_STREAM else "/proc/net/udp") as table:
            rows = [row.split() for row in list(table)[1:]]  # local address hex IP:PORT in [1], state in [3]
        if any(int(row[1].split(":")[1], 16) == port and (kind == socket.SOCK_DGRAM or row[3] == "0A") for row in rows):
            return  # 0A: TCP_LISTEN
        if passed:
            break
        time.sleep(0.05)
    raise AssertionError(f"no receiver bound port {port} within {timeout} s")


class PyAVReceiver:
    """Decode up to ``frames`` frames of ``url`` in a thread; ``decoded``, FFmpeg's ``errors`` (its error
    log lines while decoding, and an exception other than the end of the stream)."""

    def __init__(self, url: str, options: dict | None = None, frames: int = 30):
        self.url, self.options, self.frames = url, dict(options or {}), frames
        self.decoded = 0
        self.errors: list[str] = []
        self.sizes: set[tuple[int, int]] = set()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import av

        # An RTSP listener is bounded by its listen_timeout: PyAV's own timeout, and FFmpeg's log going to
        # Python (any level set), break the listener's handshake (PyAV 18): it is told by its exceptions.
        listen = "rtsp_flags" in self.options
        level = av.logging.get_level()
        av.logging.set_level(None if listen else av.logging.ERROR)
        try:
            with contextlib.nullcontext([]) if listen else av.logging.Capture(local=True) as logs:
                timeout = {} if listen else {"timeout": (15, 5)}
                with av.open(self.url, options=self.options, **timeout) as container:
                    for frame in container.decode(video=0):
                        self.decoded += 1
                        self.sizes.add((frame.width, frame.height))
                        if self.decoded >= self.frames:
                            break
            self.errors += [f"{entry[1]}: {entry[2].strip()}" for entry in logs]
        except Exception as exc:  # the stream ended early (a read timeout) or was broken
            if self.decoded < self.frames:
                self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            av.logging.set_level(level)

    def poll(self) -> int | None:
        """None while it receives (as Popen.poll), 0 once it has stopped."""
        return None if self._thread.is_alive() else 0

    def join(self, timeout: float = 20.0) -> "PyAVReceiver":
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the receiver of {self.url} did not finish within {timeout} s"
        return self


def ffmpeg_receiver(*input_args: str, frames: int = 30) -> subprocess.Popen:
    """``ffmpeg -v error INPUT -frames:v N -f null -``: exit 0 and an empty stderr mean N frames decoded
    without an error."""
    return subprocess.Popen([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", *input_args, "-frames:v", str(frames),
                             "-f", "null", "-"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def make_result(index: int, size: tuple[int, int] = (160, 96)) -> Result:
    """A segmented frame whose picture moves from one index to the next, read now."""
    width, height = size
    mask = np.zeros((height, width), np.uint8)
    mask[: height // 3] = 11  # sky
    mask[height // 2:, : (index * 5) % width] = 10  # road, growing
    frame = np.full((height, width, 3), 90, np.uint8)
    frame[:, (index * 3) % width] = 255
    counts = np.bincount(mask.ravel(), minlength=len(CLASS_NAMES))
    return Result(mask=mask, shares=counts / mask.size, class_names=list(CLASS_NAMES), frame=frame, index=index,
                  timestamp=index / 30, read_at=time.monotonic())


def feed(sink, frames: int, fps: float = 60.0, until=None) -> int:
    """Write ``frames`` results to ``sink`` at about ``fps`` (or until ``until()`` is true); returns how many."""
    for index in range(frames):
        if until is not None and until():
            return index
        sink.write(make_result(index))
        time.sleep(1.0 / fps)
    return frames
