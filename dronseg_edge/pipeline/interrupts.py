"""Signals during a run: Ctrl-C and SIGTERM stop it cleanly, never halfway through a frame's writes
or while the outputs are being finalised."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading


class InterruptGuard:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt in the main thread, but never inside ``critical()``:
    a signal arriving there is held until the block ends."""

    def __init__(self):
        self.requested = False
        self._critical = False
        self._previous: dict = {}

    def _handle(self, *_):
        self.requested = True
        if not self._critical:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self):
        self._critical = True
        try:
            yield
        finally:
            self._critical = False
        if self.requested:
            raise KeyboardInterrupt

    def __enter__(self) -> "InterruptGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def interrupts_deferred():
    """While the outputs are finalised, a second Ctrl-C only prints a note instead of breaking them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def note(*_):
        print("finishing the outputs, one moment...", file=sys.stderr)

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
