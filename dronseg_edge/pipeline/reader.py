"""Decoding in a background thread, ahead of inference.

Two modes: *queued* (files: a bounded queue, so decoding never runs more than ``queue_size``
frames ahead and memory stays flat) and *live* (cameras, streams: a one-frame slot that the
newest frame overwrites, so latency cannot grow; overwritten frames are counted as dropped).

:func:`put_unless_stopped` is the bounded-queue put that every pipeline thread uses to hand work on
(this reader, the sink workers). A plain blocking ``put`` on a full queue would wait forever once its
consumer has stopped (a failed writer, a run being cancelled), hanging the producer and the run with
it. Waiting in short slices and asking ``stopped`` between them bounds that wait to one slice.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Callable, Iterator

from dronseg_edge.pipeline.sources import FrameRecord, Source

_END = object()
POLL_S = 0.1  # how long one wait lasts: the longest delay before a stop is noticed
# How long a stop waits for a read in progress. A read that never returns (a pipe whose writer stalled, a hung
# device or GStreamer pipeline: no read timeout reaches them) is left behind; docker stop kills 10 s after SIGTERM.
STOP_WAIT_S = 3.0


def put_unless_stopped(target: queue.Queue, item, stopped: Callable[[], bool]) -> bool:
    """Put ``item`` into ``target``; True once it went in, False (the item dropped) when ``stopped()``,
    asked before every wait, came first."""
    while not stopped():
        try:
            target.put(item, timeout=POLL_S)
            return True
        except queue.Full:
            continue
    return False


class _LatestSlot:
    """A one-frame queue.Queue that never blocks: ``put`` replaces an untaken frame (counted as dropped).

    The end marker (or an error) waits beside the frame instead of replacing it, so the last frame
    of a file is still processed.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._item = self._final = None
        self.dropped = 0

    def put(self, item, timeout: float | None = None) -> None:
        with self._cond:
            if item is _END or isinstance(item, BaseException):
                self._final = item
            else:
                self.dropped += self._item is not None
                self._item = item
            self._cond.notify()

    def get(self, timeout: float):
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._final is not None, timeout)
            item, self._item = self._item, None
            if item is None and self._final is None:
                raise queue.Empty
            return self._final if item is None else item


class FrameReader:
    """Iterate over a source's frames decoded by a background thread.

    ``live``: keep only the newest frame (drops counted in ``dropped``); a video file read live is paced
    at its own fps, as a camera would deliver it (``realtime``);
    ``stride``: every N-th frame. Errors raised by the source re-raise in the consuming thread.
    """

    def __init__(self, source: Source, *, live: bool = False, stride: int = 1, queue_size: int = 8):
        self.source = source.unread()
        self.live = bool(live)
        self.stride = max(1, int(stride))
        self.realtime = self.live and source.kind == "video"
        self._buffer = _LatestSlot() if self.live else queue.Queue(maxsize=max(1, queue_size))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dronseg-decode", daemon=True)
        self.decoded, self.decode_ms = 0, 0.0
        self.first_read_at: float | None = None  # when the first frame was read (time.monotonic())
        self._left = False  # a stop gave up waiting for a read that did not return

    @property
    def dropped(self) -> int:
        return getattr(self._buffer, "dropped", 0)

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
                self.first_read_at = self.first_read_at or record.read_at
                put_unless_stopped(self._buffer, record, self._stop.is_set)
            put_unless_stopped(self._buffer, _END, self._stop.is_set)
        except BaseException as exc:  # handed to the consumer, which raises it in its own thread
            put_unless_stopped(self._buffer, exc, self._stop.is_set)

    def __iter__(self) -> Iterator[FrameRecord]:
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()
        while True:
            # Once it has ended, anything it left is already in the buffer; once stopped, a read that never
            # returns is not waited for.
            alive = self._thread.is_alive() and not self._stop.is_set()
            try:
                item = self._buffer.get(timeout=0.1 if alive else 0.0)
            except queue.Empty:
                if alive:
                    continue
                return
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def stop(self, timeout: float = STOP_WAIT_S) -> None:
        """Stop decoding and wait up to ``timeout`` for the thread, once. A read still blocked then is left
        behind with its capture, which the source then never releases under it (that crashes as the read resumes)."""
        self._stop.set()
        self.source.stop()
        if timeout and self._thread.is_alive() and not self._left:
            self._thread.join(timeout)
            self._left = self._thread.is_alive()
            if self._left:
                self.source.capture = None  # freed once its read returns
