"""A recording stand-in for the parts of ``torch.cuda`` the backends use for streams, events and
graphs, so their ordering and bookkeeping run on a machine without a GPU (tensors stay on the CPU).

A fake graph capture runs its body eagerly (the "graph" then replays nothing): tests check which
stream, mode and lock the capture used, not what a replay computes.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time

import torch

import dronseg_edge.runtime.cuda_graph as cuda_graph

_HANDLES = itertools.count(1000)


class FakeStream:
    def __init__(self, device=None, handle: int | None = None, name: str = ""):
        self.cuda_stream = next(_HANDLES) if handle is None else handle
        self.name = name or f"stream{self.cuda_stream}"
        self.waited_for: list = []  # streams and events this stream was told to wait for
        self.synchronized = 0

    def synchronize(self) -> None:
        self.synchronized += 1

    def wait_stream(self, other) -> None:
        self.waited_for.append(other)

    def wait_event(self, event) -> None:
        self.waited_for.append(event)

    def __repr__(self) -> str:
        return f"FakeStream({self.name})"


class FakeEvent:
    def __init__(self, enable_timing: bool = False, done: bool = True):
        self.recorded_on = None
        self.done = done
        self.synchronized = False

    def record(self, stream=None) -> None:
        self.recorded_on = stream

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.synchronized = True
        self.done = True


class FakeCuda:
    """Install with ``FakeCuda().install(monkeypatch)``; ``current`` starts as the legacy default stream (handle 0)."""

    def __init__(self, capture_fails: bool = False, capture_seconds: float = 0.0):
        self.default = FakeStream(handle=0, name="default")
        self.local = threading.local()
        self.created: list[FakeStream] = []
        self.captures: list[dict] = []
        self.capture_fails = capture_fails
        self.capture_seconds = capture_seconds
        self.active_captures = 0
        self.most_concurrent_captures = 0
        self.synchronized = 0  # device-wide synchronizes (torch.cuda.synchronize)
        self.syncs_during_capture = 0  # of those, how many came while a capture ran: each breaks it on a GPU
        self._count_lock = threading.Lock()

        class CUDAGraph:
            def __init__(self):
                self.replays = 0

            def replay(self):
                self.replays += 1

        self.CUDAGraph = CUDAGraph
        self.Event = FakeEvent

    @property
    def current(self) -> FakeStream:
        return getattr(self.local, "current", self.default)

    def install(self, monkeypatch) -> "FakeCuda":
        for name in ("Stream", "current_stream", "stream", "device", "synchronize", "CUDAGraph", "graph", "Event"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        return self

    def Stream(self, device=None) -> FakeStream:  # noqa: N802 (torch's name)
        stream = FakeStream(device)
        self.created.append(stream)
        return stream

    def current_stream(self, device=None) -> FakeStream:
        return self.current

    @contextlib.contextmanager
    def stream(self, stream):
        before = self.current
        self.local.current = stream
        try:
            yield
        finally:
            self.local.current = before

    def device(self, device):
        return contextlib.nullcontext()

    def synchronize(self, device=None) -> None:
        with self._count_lock:
            self.synchronized += 1
            self.syncs_during_capture += self.active_captures > 0

    @contextlib.contextmanager
    def graph(self, graph, pool=None, stream=None, capture_error_mode="global"):
        self.captures.append({"stream": stream, "mode": capture_error_mode, "locked": cuda_graph.CAPTURE_LOCK.locked(),
                              "thread": threading.get_ident()})
        with self._count_lock:
            self.active_captures += 1
            self.most_concurrent_captures = max(self.most_concurrent_captures, self.active_captures)
        try:
            with self.stream(stream if stream is not None else FakeStream(name="torch-capture")):
                if self.capture_seconds:
                    time.sleep(self.capture_seconds)
                if self.capture_fails:
                    raise RuntimeError("operation not permitted when stream is capturing\nmore detail")
                yield
        finally:
            with self._count_lock:
                self.active_captures -= 1
