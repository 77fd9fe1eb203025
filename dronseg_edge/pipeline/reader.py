"""Decoding in a background thread, ahead of inference.

Two modes: *queued* (files: a bounded queue, so decoding never runs more than ``queue_size``
frames ahead and memory stays flat) and *live* (cameras, streams: a one-frame slot that the
newest frame overwrites, so latency cannot grow; overwritten frames are counted as dropped).
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Iterator

from dronseg_edge.pipeline.queues import put_unless_stopped
from dronseg_edge.pipeline.sources import FrameRecord, Source

_END = object()


class _LatestSlot:
    """Holds the newest frame only; ``put`` replaces an untaken frame and counts it as dropped.

    The end marker (or an error) waits beside the frame instead of replacing it, so the last frame
    of a file is still processed.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._item = None
        self._final = None
        self.dropped = 0

    def put(self, item, stop: threading.Event) -> None:
        with self._cond:
            if item is _END or isinstance(item, BaseException):
                self._final = item
            else:
                if self._item is not None:
                    self.dropped += 1
                self._item = item
            self._cond.notify()

    def get(self, timeout: float):
        with self._cond:
            if self._item is None and self._final is None:
                self._cond.wait(timeout)
            if self._item is not None:
                item, self._item = self._item, None
                return item
            if self._final is not None:
                return self._final
            raise queue.Empty


class _BoundedQueue:
    def __init__(self, size: int):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, size))
        self.dropped = 0

    def put(self, item, stop: threading.Event) -> None:
        put_unless_stopped(self._queue, item, stop.is_set)

    def get(self, timeout: float):
        return self._queue.get(timeout=timeout)


class FrameReader:
    """Iterate over a source's frames decoded by a background thread.

    ``live``: keep only the newest frame (drops counted in ``dropped``); ``realtime``: pace a file
    at its own fps, as a camera would deliver it (defaults to ``live`` for video files);
    ``stride``: every N-th frame. Errors raised by the source re-raise in the consuming thread.
    """

    def __init__(self, source: Source, *, live: bool = False, stride: int = 1, queue_size: int = 8,
                 realtime: bool | None = None):
        self.source = source
        self.live = bool(live)
        self.stride = max(1, int(stride))
        self.realtime = (self.live and source.kind == "video") if realtime is None else bool(realtime)
        self._buffer = _LatestSlot() if self.live else _BoundedQueue(queue_size)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dronseg-decode", daemon=True)
        self.decoded = 0
        self.decode_ms = 0.0

    @property
    def dropped(self) -> int:
        return self._buffer.dropped

    def start(self) -> "FrameReader":
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()
        return self

    def _run(self) -> None:
        began = None
        try:
            for record in self.source.frames(self.stride):
                if self._stop.is_set():
                    break
                if self.realtime and record.timestamp is not None:
                    began = time.monotonic() - record.timestamp if began is None else began
                    if self._stop.wait(max(0.0, began + record.timestamp - time.monotonic())):
                        break
                self.decoded += 1
                self.decode_ms += record.decode_ms
                record.read_at = time.monotonic()
                self._buffer.put(record, self._stop)
            self._buffer.put(_END, self._stop)
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            self._buffer.put(exc, self._stop)

    def __iter__(self) -> Iterator[FrameRecord]:
        self.start()
        while True:
            try:
                item = self._buffer.get(timeout=0.1)
            except queue.Empty:
                if self._thread.is_alive():
                    continue
                try:  # the thread has ended: anything it left is already in the buffer
                    item = self._buffer.get(timeout=0.0)
                except queue.Empty:
                    return
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self, timeout: float = 10.0) -> None:
        """Stop decoding and wait for the thread (bounded: a hung network read is left behind)."""
        self._stop.set()
        self.source.stop()
        if self._thread.is_alive():
            self._thread.join(timeout)
