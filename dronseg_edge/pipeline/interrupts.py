"""Signals during a run: Ctrl-C, SIGTERM (systemd, docker stop) and SIGHUP (the terminal closed) stop
it cleanly, never halfway through a frame's writes or while the outputs are being finalised.
SIGKILL cannot be caught: what it leaves is described in docs/reliability.md."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading


# The signals that stop a run cleanly (SIGHUP does not exist on Windows).
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class InterruptGuard:
    """Ctrl-C, SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread, but never inside
    ``critical()``: a signal arriving there is held until the block ends. ``signal_name`` says which came.
    Entered after ``held()``, whose handlers it keeps."""

    def __init__(self):
        self.signal_name: str | None = None  # the first stop signal that came
        self._critical = False
        self._previous: dict = {}

    def _handle(self, signum, _frame=None):
        self.signal_name = self.signal_name or signal.Signals(signum).name
        if not self._critical:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self):
        self._critical = True
        try:
            yield
        finally:
            self._critical = False
        if self.signal_name:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self):
        """Its handlers installed now, a stop signal held until ``with guard``, which raises it as it starts;
        on a failure inside, the handlers before are put back."""
        self._previous, self._critical = handle_stop_signals(self._handle), True
        try:
            yield
        except BaseException:
            handle_stop_signals(self._previous)
            raise

    def __enter__(self) -> "InterruptGuard":
        self._critical = False
        if self.signal_name:  # it came while held
            handle_stop_signals(self._previous)
            raise KeyboardInterrupt
        return self

    def __exit__(self, *exc) -> None:
        handle_stop_signals(self._previous)


def handle_stop_signals(handler) -> dict:
    """Install ``handler`` (one callable, or a dict: signal -> handler) for the stop signals, where
    Python allows it (the main thread); the handlers it replaced, to put back the same way. One callable
    leaves an ignored signal ignored (``nohup`` ignores SIGHUP, a shell's background job SIGINT)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    handlers = handler if isinstance(handler, dict) else \
        {sig: handler for sig in STOP_SIGNALS if signal.getsignal(sig) != signal.SIG_IGN}
    return {sig: signal.signal(sig, new) for sig, new in handlers.items()}


@contextlib.contextmanager
def interrupts_deferred():
    """While the outputs are finalised, a second Ctrl-C only prints a note instead of breaking them."""
    previous = handle_stop_signals(lambda *_: print("finishing the outputs, one moment...", file=sys.stderr))
    try:
        yield
    finally:
        handle_stop_signals(previous)
