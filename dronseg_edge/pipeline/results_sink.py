"""``--results URL|-``: the per-frame JSON lines (pipeline/results_schema.py) for other programs.

Three targets: a file (every line, written whole with one unbuffered write, as stats.jsonl is), the
standard output (``-``: a shell pipe; the CLI then prints its own lines to standard error) and
``udp://HOST:PORT`` (a datagram per line, for a MAVLink bridge or a logger; never waits: a line the
system cannot take at once is dropped and counted). A file or a pipe keeps every line and so, like the
other files, paces the run when it cannot keep up; a pipe whose reader has gone (EPIPE) stops the
results only, with a warning, and the run goes on.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
from pathlib import Path

from dronseg_edge.atomic import storage_failure
from dronseg_edge.errors import DronsegError
from dronseg_edge.pipeline.live_targets import parse_results_target
from dronseg_edge.pipeline.result import Result
from dronseg_edge.pipeline.results_schema import SCHEMA, frame_results
from dronseg_edge.pipeline.sinks import Sink, _write_all, open_new

log = logging.getLogger(__name__)

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
        self.lines = 0
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
            host, port = where
            try:
                self.address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
            except OSError as exc:
                raise DronsegError(f"--results {target}: host {host} is unknown ({exc.strerror or exc})") from None
            self._socket = socket.socket(self.address[0], socket.SOCK_DGRAM)
            self._socket.setblocking(False)

    def _write(self, result: Result) -> None:
        if not self._gone:
            line = frame_results(result, self.with_confidence)
            try:
                if self._socket is not None:
                    self._socket.sendto(line, self.address[4])
                else:
                    _write_all(self._fd, line)
                self.lines += 1
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
        return {"target": self.target, "kind": self.kind, "schema": SCHEMA, "lines": self.lines,
                "lines_dropped": self.dropped}
