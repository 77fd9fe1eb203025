"""``--results URL|-``: one JSON object per frame, on one line, for other programs (its one owner).

Three targets: a file (every line, written whole with one unbuffered write, as stats.jsonl is), the
standard output (``-``: a shell pipe; the CLI then prints its own lines to standard error) and
``udp://HOST:PORT`` (a datagram per line, for a MAVLink bridge or a logger; never waits: a line the
system cannot take at once is dropped and counted). A file or a pipe keeps every line and so, like the
other files, paces the run when it cannot keep up; a pipe whose reader has gone (EPIPE) stops the
results only, with a warning, and the run goes on.

    {"schema": 1, "frame": 42, "name": "000042", "timestamp": 1.4, "wall_time": 1767225600.123,
     "size": [1280, 720], "shares": {"background": 0.21, ..., "sky": 0.0}, "low_confidence": null,
     "classes": {"road": {"pixels": 270336, "bbox": [0, 344, 1280, 376]}, ...}}

- ``frame``: the frame's index in the source (0-based, before ``--stride``); ``name``: its output name
  (the image's stem for image sources);
- ``timestamp``: seconds into the source (a video's presentation time, a camera's or stream's wall
  clock since its first read; null for images);
- ``wall_time``: UNIX time in seconds when the frame's result was ready (for latency against other
  clocks);
- ``size``: [width, height] of the frame in pixels;
- ``shares``: the share of the frame's pixels of each class, 0..1 (under ``--classes`` those classes only);
- ``low_confidence``: with ``--save-conf``, the share of pixels whose most likely class has a
  probability below 0.5; null otherwise;
- ``classes``: for each class present in the frame, its pixel count and bounding box ``[x, y, width,
  height]`` in pixels of the frame (x to the right, y down, from the top-left corner).

A reader checks ``schema`` first: it grows when a field changes meaning or goes away (new fields may
appear within a version).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dronseg_edge.atomic import storage_failure
from dronseg_edge.pipeline.live_targets import parse_results_target, resolve_udp
from dronseg_edge.pipeline.result import LOW_CONFIDENCE_U8, Result
from dronseg_edge.pipeline.sinks import Sink, open_new, write_lines

log = logging.getLogger(__name__)

SCHEMA = 1

# A datagram not sent for these is dropped and counted: the buffer is full (EAGAIN), no one listens
# (ECONNREFUSED: an ICMP answer to an earlier one), no route, or a line too long for a datagram.
DROPPED_ERRNOS = (errno.EAGAIN, errno.EWOULDBLOCK, errno.ECONNREFUSED, errno.ENOBUFS, errno.EHOSTUNREACH,
                  errno.ENETUNREACH, errno.EMSGSIZE)


class ResultsSink(Sink):
    """One JSON line per frame to ``target`` (``-``, ``udp://HOST:PORT`` or a file that must not exist yet).
    ``with_confidence``: fill ``low_confidence`` (``--save-conf``). ``stdout_fd``: the descriptor ``-`` means."""

    name = "results"
    heavy = False  # a few hundred bytes a frame: goes on below the free-disk floor, as stats do

    def __init__(self, target: str, with_confidence: bool = False, stdout_fd: int = 1):
        super().__init__()
        self.kind, where = parse_results_target(target)
        self.target = target
        self.with_confidence = with_confidence
        self._fd: int | None = None
        self._socket: socket.socket | None = None
        self._gone = False
        if self.kind == "stdout":
            self._fd = stdout_fd
        elif self.kind == "file":
            self.path = Path(where)
            self._fd = open_new(self.path, f"--results {self.path}: the file exists and a run never appends to "
                                           "another's; give a new name")
        else:
            self.address = resolve_udp(target, *where)
            self._socket = socket.socket(self.address[0], socket.SOCK_DGRAM)
            self._socket.setblocking(False)

    def _write(self, result: Result) -> None:
        if not self._gone:
            line = frame_results(result, self.with_confidence)
            try:
                if self._socket is not None:
                    self._socket.sendto(line, self.address[4])
                else:
                    write_lines(self._fd, line)
                return
            except BrokenPipeError:  # the reader of the pipe has exited: the run goes on without it
                self._gone = True
                log.warning("--results -: the program reading the results has stopped (broken pipe); the run goes "
                            "on, its files keep every frame")
            except OSError as exc:
                if self._socket is None or exc.errno not in DROPPED_ERRNOS:
                    raise storage_failure(exc, self.target) from None
        self.dropped += 1

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()  # idempotent
        if self.kind == "file" and self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = None

    def record(self) -> dict:
        """summary.json's ``results``."""
        target = os.path.abspath(self.path) if self.kind == "file" else self.target
        return {"target": target, "kind": self.kind, "schema": SCHEMA, "lines": self.frames,
                "lines_dropped": self.frames_dropped}  # lost datagrams, a pipe gone, a write left stuck (SinkWorker)


def frame_results(result: Result, with_confidence: bool = False) -> bytes:
    """The ``--results`` line of one segmented frame: the JSON object, ``schema`` first, as one UTF-8
    line ending in a newline."""
    low = result.low_confidence_share(LOW_CONFIDENCE_U8) if with_confidence else None
    line = {"schema": SCHEMA, "frame": result.index, "name": result.name,
            "timestamp": None if result.timestamp is None else round(result.timestamp, 6),
            "wall_time": round(time.time(), 6), "size": list(result.size), "shares": result.shares_by_name(),
            "low_confidence": None if low is None else round(low, 6), "classes": class_regions(result)}
    return (json.dumps(line, separators=(",", ":")) + "\n").encode("utf-8")


def class_regions(result: Result) -> dict[str, dict[str, Any]]:
    """{class name: {"pixels": n, "bbox": [x, y, w, h]}} for each (kept) class present in the frame."""
    regions = {}
    pixels = np.rint(np.asarray(result.shares, dtype=np.float64) * result.mask.size).astype(np.int64)
    for index in np.flatnonzero(pixels):
        if result.classes is not None and index not in result.classes:
            continue
        x, y, w, h = cv2.boundingRect(cv2.compare(result.mask, int(index), cv2.CMP_EQ))
        regions[result.class_names[index]] = {"pixels": int(pixels[index]), "bbox": [x, y, w, h]}
    return regions
