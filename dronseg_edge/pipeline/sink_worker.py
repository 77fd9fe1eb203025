"""Each sink in its own thread behind a bounded queue (:class:`SinkWorker`); errors carried to the main thread."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from typing import Callable

from dronseg_edge.atomic import storage_failure
from dronseg_edge.errors import DronsegError, RuntimeFailure
from dronseg_edge.pipeline.reader import put_unless_stopped
from dronseg_edge.pipeline.result import Result
from dronseg_edge.pipeline.sinks import Sink

log = logging.getLogger(__name__)


class SinkWorker:
    """Runs one sink in a thread behind a bounded queue; the sink's errors re-raise in ``put``/``close``.

    A write error (an OSError, or the RuntimeFailure the sinks make of one) is kept by the thread and
    raised in the main thread as one RuntimeFailure naming the file; later frames are discarded.
    Any other exception is a bug and re-raises unchanged.

    A lossy sink's (``Sink.lossy``: streams, the preview) ``put`` never waits: when its queue of
    ``LIVE_QUEUE`` frames is full the oldest is dropped (``sink.queue_dropped``), so a slow receiver costs
    frames on that output only, and the newest frame is always the next one sent.
    """

    LIVE_QUEUE = 2
    # How long close() waits for a lossy sink to finish: a healthy stream ends at once (nothing is held
    # back by a zero-latency encoder); one stuck in a write (to a receiver that stopped reading) for
    # longer than that already is left at once.
    LIVE_CLOSE_S = 1.0

    def __init__(self, sink: Sink, queue_size: int = 8):
        self.sink = sink
        self._queue: queue.Queue = queue.Queue(maxsize=self.LIVE_QUEUE if sink.lossy else max(1, queue_size))
        self.error: BaseException | None = None  # the sink's first error (an OSError made one line)
        self._discard = self._closed = False
        self._busy_since: float | None = None  # monotonic s when the write under way began
        self._thread = threading.Thread(target=self._run, name=f"dronseg-{sink.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self.error is None and not self._discard:
                self._busy_since = time.monotonic()
                try:
                    self.sink.write(item)
                except BaseException as exc:  # kept for the main thread; later items are discarded
                    self.error = self._one_line(exc)
                self._busy_since = None

    def _one_line(self, exc: BaseException) -> BaseException:
        return storage_failure(exc, self.sink.target) if isinstance(exc, OSError) else exc

    def put(self, result: Result, stop: Callable[[], bool] = lambda: False) -> None:
        """Queue ``result`` for the sink; raises the sink's error instead once it has failed. ``stop``
        (a stop signal came) ends a wait for room, the frame left out: a sink stuck in a write (a pipe
        whose reader stopped reading) cannot hold a Ctrl-C or SIGTERM back."""
        self._raise_error()
        if self.sink.lossy:
            return self._put_newest(result)
        with contextlib.suppress(queue.Full):  # room: the frame goes in even after a stop signal, as it went
            return self._queue.put_nowait(result)  # to the sinks before this one (run.py: all sinks or none)
        if not put_unless_stopped(self._queue, result, lambda: self.error is not None or stop()):
            self._raise_error()

    def _put_newest(self, result: Result | None) -> None:
        while True:
            try:
                return self._queue.put_nowait(result)
            except queue.Full:
                with contextlib.suppress(queue.Empty):
                    self._queue.get_nowait()
                    self.sink.queue_dropped += 1

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def close(self, discard: bool = False, patience: float | None = None) -> None:
        """Write everything queued (or, with ``discard``, drop it: after a full disk, the room left is
        for finishing the files), finalise the sink, then re-raise a write error if there was one.
        ``patience`` (after a stop signal): a sink stuck that long in one write is left, as a lossy one is.
        Idempotent: a second call only re-raises the error."""
        if not self._closed:
            self._closed = True
            self._discard = discard
            if self.sink.lossy:
                if not self._close_live():  # stuck in a network write, or still sending: left to end with the process
                    self._drop_held()
                    stuck = self.stuck(self.LIVE_CLOSE_S)  # else it still sends, slower than the frames came
                    log.warning("%s did not finish within %g s (%s): left as it is", self.sink.name, self.LIVE_CLOSE_S,
                                "one send has gone on that long: its receiver stopped reading?" if stuck else
                                "still sending: its encoder or link is slower than the frames came")
                    return
            elif not self._finish(patience):
                self._drop_held()
                log.warning("%s: a write has not returned for %g s (a pipe whose reader stopped reading?): left "
                            "as it is", self.sink.name, patience)
                return
            try:
                self.sink.close()
            except (OSError, DronsegError) as exc:
                self.error = self._combined(self._one_line(exc))
        self._raise_error()

    def _drop_held(self) -> None:
        """Count the frames of a sink left stuck as dropped: the one in its write and those queued (summary.json:
        written or sent + dropped = given)."""
        self.sink.queue_dropped += 1 + sum(item is not None for item in list(self._queue.queue))

    def _finish(self, patience: float | None) -> bool:
        """Queue the end and wait for the thread; False once one write has taken over ``patience`` s."""
        if not put_unless_stopped(self._queue, None, lambda: self.stuck(patience)):
            return False
        while self._thread.is_alive():
            self._thread.join(0.1)
            if self.stuck(patience):
                return False
        return True

    def stuck(self, patience: float | None) -> bool:
        """Whether the write under way has taken over ``patience`` s (None: never stuck)."""
        busy = self._busy_since
        return patience is not None and busy is not None and time.monotonic() - busy > patience

    def _close_live(self) -> bool:
        """End a lossy sink's thread: what is queued still goes out, unless the sink has been stuck in one
        write for LIVE_CLOSE_S already; True once the thread has ended (within LIVE_CLOSE_S)."""
        busy = self._busy_since
        stuck = busy is not None and time.monotonic() - busy > self.LIVE_CLOSE_S
        try:
            self._queue.put(None, timeout=0 if stuck else self.LIVE_CLOSE_S)
        except queue.Full:
            self._put_newest(None)
        self._thread.join(0 if stuck else self.LIVE_CLOSE_S)
        return not self._thread.is_alive()

    def _combined(self, closing: DronsegError) -> BaseException:
        """The error of closing, after the write error that came first (if any): both lines' news in one."""
        first = self.error
        if first is None:
            return closing
        if not isinstance(first, DronsegError):
            return first  # a bug: raised unchanged
        return RuntimeFailure(f"{first}; then {closing}", stopped=first.stopped)
